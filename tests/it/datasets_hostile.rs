//! Hostile uploads against a real `trainyard serve`: bombs by declared and by actual size,
//! paths that leave the archive, links, device files, duplicate names, archives in
//! archives, empty and lone classes, labels out of range, IDX counts that disagree,
//! corrupt images, bodies cut off midway, bodies too large. Each is a 4xx problem whose
//! type says what and whose `errors` name where; nothing is stored; and the server's
//! peak memory (its VmHWM, reset before the first upload) stays far below what the
//! bombs would unpack to.

use std::io::{Cursor, Write};
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::Value;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::procs::{Harness, Timing};
use crate::datasets::{png_of, zip_of};

/// What a bomb unpacks to.
const BOMB_BYTES: usize = 256 << 20;
/// The server's peak memory may grow by at most this over its idle size.
const MEMORY_BOUND: u64 = 160 << 20;

fn png(seed: u8) -> Vec<u8> {
    let split = crate::colour::shapes(1, u64::from(seed));
    png_of(&split, 0)
}

/// A zip member of `BOMB_BYTES` zeros, deflated.
fn zip_bomb(lie: bool) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(false);
    z.start_file("cat/a.png", opts).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..BOMB_BYTES >> 20 {
        z.write_all(&zeros).unwrap();
    }
    z.start_file("dog/b.png", opts).unwrap();
    z.write_all(&png(1)).unwrap();
    let mut bytes = z.finish().unwrap().into_inner();
    if lie {
        // Declare 1000 bytes uncompressed, in the local header and the central directory.
        patch_sizes(&mut bytes, 1000);
    }
    bytes
}

/// Sets every member's declared uncompressed size to `size`.
fn patch_sizes(zip: &mut [u8], size: u32) {
    let mut i = 0;
    while i + 46 <= zip.len() {
        match zip[i..i + 4] {
            [0x50, 0x4b, 0x03, 0x04] => zip[i + 22..i + 26].copy_from_slice(&size.to_le_bytes()),
            [0x50, 0x4b, 0x01, 0x02] => zip[i + 24..i + 28].copy_from_slice(&size.to_le_bytes()),
            _ => {}
        }
        i += 1;
    }
}

/// A tar (gzipped when `gz`) of entries built by `add`.
fn tar_of(gz: bool, add: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b);
    let raw = b.into_inner().unwrap();
    if !gz {
        return raw;
    }
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(&raw).unwrap();
    e.finish().unwrap()
}

/// A tar entry with a raw name (the builder refuses `..` and absolute paths).
fn raw_entry(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    if kind == tar::EntryType::Symlink {
        h.set_link_name("../../etc/passwd").unwrap();
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn idx(magic: [u8; 4], dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_vec();
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend(data);
    v
}

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn send(&self, query: &str, media: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/datasets{query}", self.base))
            .header("content-type", media)
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn multipart(&self, query: &str, parts: Vec<(&str, Vec<u8>)>) -> (u16, Value) {
        let form = parts
            .into_iter()
            .fold(reqwest::multipart::Form::new(), |f, (n, b)| {
                f.part(
                    n.to_string(),
                    reqwest::multipart::Part::bytes(b).file_name(n.to_string()),
                )
            });
        let r = self
            .http
            .post(format!("{}/datasets{query}", self.base))
            .multipart(form)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

/// Asserts a problem of `status` whose type ends with `kind` and whose first error names
/// `at` (a substring of the field).
#[track_caller]
fn refused(case: &str, (status, p): (u16, Value), want: u16, kind: &str, at: &str) {
    assert_eq!(status, want, "{case}: {p}");
    let ty = p["type"].as_str().unwrap_or("");
    assert!(ty.ends_with(kind), "{case}: type {ty}, want …{kind}: {p}");
    let field = p["errors"][0]["field"].as_str().unwrap_or("");
    assert!(
        field.contains(at),
        "{case}: field {field:?}, want {at:?}: {p}"
    );
    println!(
        "{case}: {status} {} — {}",
        ty.rsplit('/').next().unwrap(),
        p["detail"]
    );
}

fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    kb("VmHWM:") * 1024
}

#[sqlx::test]
async fn every_hostile_upload_is_a_named_4xx_with_memory_bounded_and_nothing_stored(pool: PgPool) {
    let h = Harness::new(&pool, Timing::default());
    let (proc_, base) = h.serve("serve", 0);
    let c = Client {
        base: base.clone(),
        http: reqwest::Client::new(),
    };
    let bomb = zip_bomb(false);
    let liar = zip_bomb(true);
    let tar_bomb = tar_of(true, |b| {
        let mut h = tar::Header::new_gnu();
        h.set_size(BOMB_BYTES as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(
            &mut h,
            "cat/a.png",
            std::io::Read::take(std::io::repeat(0), BOMB_BYTES as u64),
        )
        .unwrap();
    });
    let idle = std::fs::read_to_string(format!("/proc/{}/status", proc_.pid)).unwrap();
    let idle_rss: u64 = idle
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        * 1024;
    // Peak memory from here on.
    std::fs::write(format!("/proc/{}/clear_refs", proc_.pid), "5").unwrap();

    let zip = "application/zip";
    refused(
        "zip bomb (declared size)",
        c.send("", zip, bomb).await,
        413,
        "zip-bomb",
        "cat/a.png",
    );
    let r = c.send("", zip, liar).await;
    assert!((400..500).contains(&r.0), "zip bomb (actual size): {r:?}");
    assert!(
        r.1["errors"][0]["field"]
            .as_str()
            .unwrap()
            .contains("cat/a.png"),
        "{r:?}"
    );
    println!("zip bomb (actual size): {} {}", r.0, r.1["type"]);
    refused(
        "tar.gz bomb",
        c.send("", "application/gzip", tar_bomb).await,
        413,
        "too-large",
        "cat/a.png",
    );

    let two = |extra: (String, Vec<u8>)| {
        zip_of(&[
            ("cat/1.png".into(), png(1)),
            ("dog/1.png".into(), png(2)),
            extra,
        ])
    };
    refused(
        "path traversal",
        c.send("", zip, two(("../evil/x.png".into(), png(3)))).await,
        422,
        "path-traversal",
        "../evil/x.png",
    );
    let abs = tar_of(false, |b| {
        raw_entry(b, "cat/1.png", tar::EntryType::Regular, &png(1));
        raw_entry(b, "dog/1.png", tar::EntryType::Regular, &png(2));
        raw_entry(b, "/etc/x.png", tar::EntryType::Regular, &png(3));
    });
    refused(
        "absolute path",
        c.send("", "application/x-tar", abs).await,
        422,
        "absolute-path",
        "/etc/x.png",
    );
    let link = tar_of(false, |b| {
        raw_entry(b, "cat/1.png", tar::EntryType::Regular, &png(1));
        raw_entry(b, "dog/1.png", tar::EntryType::Symlink, &[]);
    });
    refused(
        "symlink",
        c.send("", "application/x-tar", link).await,
        422,
        "link",
        "dog/1.png",
    );
    let device = tar_of(false, |b| {
        raw_entry(b, "cat/1.png", tar::EntryType::Regular, &png(1));
        raw_entry(b, "dog/tty.png", tar::EntryType::Char, &[]);
    });
    refused(
        "device file",
        c.send("", "application/x-tar", device).await,
        422,
        "special-file",
        "dog/tty.png",
    );
    let dup = tar_of(false, |b| {
        raw_entry(b, "cat/1.png", tar::EntryType::Regular, &png(1));
        raw_entry(b, "dog/1.png", tar::EntryType::Regular, &png(2));
        raw_entry(b, "dog/1.png", tar::EntryType::Regular, &png(3));
    });
    refused(
        "duplicate name",
        c.send("", "application/x-tar", dup).await,
        422,
        "duplicate-name",
        "dog/1.png",
    );
    refused(
        "nested archive",
        c.send(
            "",
            zip,
            two(("dog/more.zip".into(), zip_of(&[("a/1.png".into(), png(4))]))),
        )
        .await,
        422,
        "nested-archive",
        "dog/more.zip",
    );
    refused(
        "empty class",
        c.send("", zip, two(("bird/".into(), vec![]))).await,
        422,
        "empty-class",
        "bird",
    );
    refused(
        "single class",
        c.send(
            "",
            zip,
            zip_of(&[("cat/1.png".into(), png(1)), ("cat/2.png".into(), png(2))]),
        )
        .await,
        422,
        "single-class",
        "",
    );
    refused(
        "corrupt image",
        c.send(
            "",
            zip,
            two((
                "dog/bad.png".into(),
                b"\x89PNG\r\n\x1a\nnot really".to_vec(),
            )),
        )
        .await,
        422,
        "corrupt-image",
        "dog/bad.png",
    );
    let whole = two(("dog/2.png".into(), png(5)));
    let cut = whole[..whole.len() / 2].to_vec();
    let r = c.send("", zip, cut).await;
    assert_eq!(r.0, 422, "truncated zip: {r:?}");
    println!("truncated zip: {} {}", r.0, r.1["type"]);

    // IDX: counts that disagree; labels past the classes named.
    let images = idx([0, 0, 8, 3], &[3, 4, 4], &[7; 48]);
    let labels = idx([0, 0, 8, 1], &[4], &[0, 1, 0, 1]);
    refused(
        "IDX counts",
        c.multipart(
            "",
            vec![("train_images", images.clone()), ("train_labels", labels)],
        )
        .await,
        422,
        "count-mismatch",
        "train_images",
    );
    let labels = idx([0, 0, 8, 1], &[3], &[0, 1, 5]);
    refused(
        "label out of range",
        c.multipart(
            "?class_names=a,b",
            vec![("train_images", images), ("train_labels", labels)],
        )
        .await,
        422,
        "label-out-of-range",
        "train_labels",
    );
    refused(
        "CSV value",
        c.send(
            "?size=2x2",
            "text/csv",
            b"0,1,2,3,4\n1,1,2,300,4\n".to_vec(),
        )
        .await,
        422,
        "bad-csv",
        "line 2",
    );

    // The body: refused by its declared length before it is read; cut off midway.
    let addr = base.strip_prefix("http://").unwrap();
    let raw = |head: String, body: &'static [u8]| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut out)).await;
        out
    };
    let big = raw(
        format!(
            "POST /datasets HTTP/1.1\r\nhost: x\r\ncontent-type: application/zip\r\n\
             content-length: {}\r\n\r\n",
            1u64 << 40
        ),
        b"PK",
    )
    .await;
    assert!(big.starts_with("HTTP/1.1 413"), "{big}");
    let broken = raw(
        "POST /datasets HTTP/1.1\r\nhost: x\r\ncontent-type: application/zip\r\n\
         content-length: 100000\r\n\r\n"
            .into(),
        b"PK\x03\x04 only the start",
    )
    .await;
    assert!(broken.starts_with("HTTP/1.1 400"), "{broken}");
    let r = c.send("", "image/png", png(1)).await;
    assert_eq!(r.0, 415, "{r:?}");

    // Nothing was stored.
    let rows: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM datasets), (SELECT count(*) FROM dataset_blobs)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rows, (0, 0));
    // And the bombs were never unpacked in memory.
    let peak = peak_rss(proc_.pid);
    println!(
        "server memory: idle {} MiB, peak over every hostile upload {} MiB (bombs unpack to {} MiB)",
        idle_rss >> 20,
        peak >> 20,
        BOMB_BYTES >> 20
    );
    assert!(
        peak < idle_rss + MEMORY_BOUND,
        "peak {} MiB over idle {} MiB",
        peak >> 20,
        idle_rss >> 20
    );
    // A good upload still works after all that.
    let (status, d) = c.send("", zip, two(("dog/2.png".into(), png(6)))).await;
    assert_eq!(status, 201, "{d}");
}
