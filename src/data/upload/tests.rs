//! Every upload here is built in memory with the `zip`, `tar` and `image` writers (or
//! crafted byte by byte where the writers refuse to produce something hostile), spooled
//! to a temporary file as the HTTP layer would, and decoded.

use std::io::{Cursor, Write};

use image::{GrayImage, ImageFormat, RgbImage};
use tempfile::NamedTempFile;
use zip::write::SimpleFileOptions;

use super::*;

// ---- builders ----------------------------------------------------------------------

fn encode(img: image::DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A gray PNG of one value everywhere except pixel (0, 0), which is `corner`.
fn png_gray(w: u32, h: u32, value: u8, corner: u8) -> Vec<u8> {
    let img = GrayImage::from_fn(w, h, |x, y| {
        image::Luma([if (x, y) == (0, 0) { corner } else { value }])
    });
    encode(img.into(), ImageFormat::Png)
}

fn png_rgb(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    encode(
        RgbImage::from_pixel(w, h, image::Rgb(rgb)).into(),
        ImageFormat::Png,
    )
}

fn jpeg_gray(w: u32, h: u32, value: u8) -> Vec<u8> {
    encode(
        GrayImage::from_pixel(w, h, image::Luma([value])).into(),
        ImageFormat::Jpeg,
    )
}

fn pgm(w: usize, h: usize, value: u8) -> Vec<u8> {
    let mut out = format!("P5\n{w} {h}\n255\n").into_bytes();
    out.extend(std::iter::repeat_n(value, w * h));
    out
}

enum E<'a> {
    File(&'a str, Vec<u8>),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
}

fn zip_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default();
    for e in entries {
        match e {
            E::File(name, bytes) => {
                zip.start_file(*name, opts).unwrap();
                zip.write_all(bytes).unwrap();
            }
            E::Dir(name) => zip.add_directory(*name, opts).unwrap(),
            E::Symlink(name, target) => zip.add_symlink(*name, *target, opts).unwrap(),
        }
    }
    zip.finish().unwrap().into_inner()
}

/// A tar header with the name written raw (the `tar` crate refuses `..` and absolute
/// paths, which is exactly what these tests need to send).
fn tar_header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    h
}

fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::File(name, bytes) => {
                let h = tar_header(name, tar::EntryType::Regular, bytes.len() as u64);
                b.append(&h, &bytes[..]).unwrap();
            }
            E::Dir(name) => {
                let h = tar_header(name, tar::EntryType::Directory, 0);
                b.append(&h, std::io::empty()).unwrap();
            }
            E::Symlink(name, target) => {
                let mut h = tar_header(name, tar::EntryType::Symlink, 0);
                h.set_link_name(target).unwrap();
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn spool(bytes: &[u8]) -> NamedTempFile {
    let mut f = NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

fn decode_archive(bytes: &[u8], opts: &Options) -> Result<Decoded, UploadError> {
    let f = spool(bytes);
    decode(Input::Archive(f.path()), opts)
}

fn refused(bytes: &[u8], opts: &Options) -> UploadError {
    match decode_archive(bytes, opts) {
        Ok(d) => panic!("decoded: {:?}", d.train),
        Err(e) => e,
    }
}

/// Asserts the error's kind and that its location names `at`, and that the message
/// shows the location.
fn assert_refused(e: &UploadError, kind: &str, at: &str) {
    assert_eq!(e.kind(), kind, "{e}");
    assert_eq!(e.at(), Some(at), "{e}");
    assert!(e.to_string().contains(at), "{e}");
}

/// Three classes (`b`, `a`, `c` as folders, so sorting matters), `per_class` 4x4 gray
/// PNGs each; image `i` of class `k` has value `10 * k + i` everywhere.
fn gray_classes(per_class: usize) -> Vec<E<'static>> {
    let mut entries = Vec::new();
    for (k, class) in ["b", "a", "c"].iter().enumerate() {
        entries.push(E::Dir(Box::leak(format!("{class}/").into_boxed_str())));
        for i in 0..per_class {
            let name = Box::leak(format!("{class}/{i:03}.png").into_boxed_str());
            let v = (10 * k + i) as u8;
            entries.push(E::File(name, png_gray(4, 4, v, v)));
        }
    }
    entries
}

fn opts() -> Options {
    Options::default()
}

// ---- class folders -----------------------------------------------------------------

#[test]
fn gray_zip_gets_sorted_class_names_and_matching_labels() {
    let d = decode_archive(&zip_of(&gray_classes(5)), &opts()).unwrap();
    assert_eq!(d.class_names, ["a", "b", "c"]);
    assert_eq!(d.format, Format::Folders);
    assert_eq!((d.train.channels, d.train.rows, d.train.cols), (1, 4, 4));
    assert_eq!(d.train.len + d.test.len, 15);
    assert_eq!(d.resized, 0);
    // Folder b was written first with values 0..5, a second with 10..15, c with 20..25.
    for split in [&d.train, &d.test] {
        for i in 0..split.len {
            let v = split.image(i)[0];
            let expected = match v / 10 {
                0 => 1, // b
                1 => 0, // a
                _ => 2, // c
            };
            assert_eq!(split.labels[i], expected, "value {v}");
            assert!(split.image(i).iter().all(|&p| p == v));
        }
    }
}

#[test]
fn class_folder_order_is_shuffled_and_deterministic_per_seed() {
    let bytes = zip_of(&gray_classes(8));
    let a = decode_archive(&bytes, &opts()).unwrap();
    let b = decode_archive(&bytes, &opts()).unwrap();
    assert_eq!(a.train.images, b.train.images);
    assert_eq!(a.sha256(), b.sha256());
    // Not in ImageFolder order: labels are not sorted.
    assert!(
        a.train.labels.windows(2).any(|w| w[0] > w[1]),
        "{:?}",
        a.train.labels
    );
    let other = decode_archive(&bytes, &Options { seed: 7, ..opts() }).unwrap();
    assert_ne!(a.train.labels, other.train.labels);
}

#[test]
fn held_out_split_is_stratified_and_deterministic() {
    let d = decode_archive(&zip_of(&gray_classes(10)), &opts()).unwrap();
    assert_eq!(
        d.test_split,
        TestSplit::HeldOut {
            fraction: 0.2,
            seed: 0
        }
    );
    let (train, test) = d.class_counts();
    assert_eq!(train, [8, 8, 8]);
    assert_eq!(test, [2, 2, 2]);
    // No image is in both splits.
    let mut seen: Vec<u8> = (0..d.train.len)
        .map(|i| d.train.image(i)[0])
        .chain((0..d.test.len).map(|i| d.test.image(i)[0]))
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 30);
}

#[test]
fn holdout_keeps_one_of_two_and_none_of_one() {
    let labels = [0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2];
    let t = split::holdout(&labels, 0.2, 3);
    assert_eq!(t[..2].iter().filter(|&&x| x).count(), 1);
    assert!(!t[2]);
    assert_eq!(t[3..].iter().filter(|&&x| x).count(), 2);
    assert_eq!(t, split::holdout(&labels, 0.2, 3));
}

#[test]
fn sha_changes_when_one_pixel_changes() {
    let mut entries = gray_classes(3);
    let a = decode_archive(&zip_of(&entries), &opts()).unwrap();
    if let E::File(_, bytes) = &mut entries[1] {
        *bytes = png_gray(4, 4, 0, 1);
    }
    let b = decode_archive(&zip_of(&entries), &opts()).unwrap();
    assert_eq!(a.sha256().len(), 64);
    assert_ne!(a.sha256(), b.sha256());
}

#[test]
fn train_and_test_folders_are_read_as_the_uploaded_split() {
    let entries = [
        E::File("train/cat/1.png", png_gray(4, 4, 1, 1)),
        E::File("train/cat/2.png", png_gray(4, 4, 2, 2)),
        E::File("train/dog/1.png", png_gray(4, 4, 3, 3)),
        E::File("test/dog/1.png", png_gray(4, 4, 4, 4)),
    ];
    let d = decode_archive(&zip_of(&entries), &opts()).unwrap();
    assert_eq!(d.class_names, ["cat", "dog"]);
    assert_eq!(d.test_split, TestSplit::Uploaded);
    assert_eq!((d.train.len, d.test.len), (3, 1));
    assert_eq!(d.test.labels, [1]);
    assert_eq!(d.test.image(0)[0], 4);
}

#[test]
fn a_common_top_folder_is_stripped() {
    let entries = [
        E::Dir("digits/"),
        E::File("digits/0/a.png", png_gray(4, 4, 1, 1)),
        E::File("digits/1/b.png", png_gray(4, 4, 2, 2)),
        E::File("digits/1/deeper/c.png", png_gray(4, 4, 3, 3)),
        E::File("README.md", b"not an image".to_vec()),
        E::File("__MACOSX/digits/0/._a.png", b"junk".to_vec()),
        E::File("digits/.DS_Store", b"junk".to_vec()),
    ];
    let d = decode_archive(&zip_of(&entries), &opts()).unwrap();
    assert_eq!(d.class_names, ["0", "1"]);
    let (train, test) = d.class_counts();
    assert_eq!([train[0] + test[0], train[1] + test[1]], [1, 2]);
}

#[test]
fn tar_and_tar_gz_decode_like_zip() {
    let entries = gray_classes(4);
    let z = decode_archive(&zip_of(&entries), &opts()).unwrap();
    let t = decode_archive(&tar_of(&entries), &opts()).unwrap();
    let tgz = decode_archive(&gzip(&tar_of(&entries)), &opts()).unwrap();
    assert_eq!(z.sha256(), t.sha256());
    assert_eq!(z.sha256(), tgz.sha256());
}

#[test]
fn jpeg_and_pgm_images_are_read() {
    let entries = [
        E::File("x/a.JPG", jpeg_gray(8, 8, 128)),
        E::File("y/b.pgm", pgm(8, 8, 9)),
    ];
    let d = decode_archive(&zip_of(&entries), &opts()).unwrap();
    assert_eq!(d.train.len + d.test.len, 2);
    assert_eq!(d.train.channels, 1);
}

#[test]
fn rgb_is_detected_and_channels_1_converts_as_pil_l() {
    let entries = [
        E::File("a/1.png", png_rgb(2, 2, [200, 100, 50])),
        E::File("b/1.png", png_gray(2, 2, 7, 7)),
    ];
    let o = Options {
        test_fraction: 0.5,
        ..opts()
    };
    let d = decode_archive(&zip_of(&entries), &o).unwrap();
    assert_eq!(d.train.channels, 3);
    let all: Vec<(u8, &[u8])> = [&d.train, &d.test]
        .iter()
        .flat_map(|s| (0..s.len).map(move |i| (s.labels[i], s.image(i))))
        .collect();
    let colour = all.iter().find(|(l, _)| *l == 0).unwrap().1;
    assert_eq!(
        colour,
        [200, 200, 200, 200, 100, 100, 100, 100, 50, 50, 50, 50]
    );
    let gray = all.iter().find(|(l, _)| *l == 1).unwrap().1;
    assert_eq!(gray, [7; 12]);

    let d = decode_archive(
        &zip_of(&entries),
        &Options {
            channels: Some(1),
            ..o
        },
    )
    .unwrap();
    assert_eq!(d.train.channels, 1);
    let px = [&d.train, &d.test]
        .iter()
        .flat_map(|s| {
            (0..s.len)
                .filter(|&i| s.labels[i] == 0)
                .map(|i| s.image(i)[0])
        })
        .next()
        .unwrap();
    // PIL: (200 * 19595 + 100 * 38470 + 50 * 7471 + 0x8000) >> 16 = 124
    assert_eq!(px, 124);
}

#[test]
fn mixed_sizes_are_refused_without_size_and_resized_with_it() {
    let entries = [
        E::File("a/1.png", png_gray(4, 4, 10, 10)),
        E::File("b/1.png", png_gray(8, 6, 20, 20)),
    ];
    let e = refused(&zip_of(&entries), &opts());
    assert_refused(&e, "mixed-sizes", "b/1.png");
    assert!(e.to_string().contains("a/1.png"), "{e}");
    assert!(e.to_string().contains("size"), "{e}");

    let d = decode_archive(
        &zip_of(&entries),
        &Options {
            size: Some((5, 5)),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!((d.train.rows, d.train.cols), (5, 5));
    assert_eq!(d.resized, 2);
    // A constant image stays constant under PIL's bilinear filter.
    let s = if d.train.len == 1 { &d.train } else { &d.test };
    assert!(s.images.iter().all(|&p| p == 10 || p == 20));
}

#[test]
fn images_over_max_side_need_size() {
    let mut o = opts();
    o.limits.max_side = 4;
    let entries = [
        E::File("a/1.png", png_gray(8, 8, 1, 1)),
        E::File("b/1.png", png_gray(8, 8, 2, 2)),
    ];
    assert_eq!(refused(&zip_of(&entries), &o).kind(), "size-required");
    o.size = Some((4, 4));
    assert_eq!(decode_archive(&zip_of(&entries), &o).unwrap().resized, 2);
    o.size = Some((5, 5));
    assert_eq!(refused(&zip_of(&entries), &o).kind(), "bad-option");
}

// ---- hostile archives --------------------------------------------------------------

fn two_good() -> Vec<E<'static>> {
    vec![
        E::File("cat/1.png", png_gray(4, 4, 1, 1)),
        E::File("dog/1.png", png_gray(4, 4, 2, 2)),
    ]
}

fn with(extra: E<'static>) -> Vec<E<'static>> {
    let mut v = two_good();
    v.push(extra);
    v
}

/// Rewrites the declared uncompressed size of the zip member `name` (local header and
/// central directory) to `size`.
fn patch_zip_size(zip: &mut [u8], name: &str, size: u32) {
    let name = name.as_bytes();
    for p in 0..zip.len() - name.len() {
        if &zip[p..p + name.len()] != name {
            continue;
        }
        if p >= 30 && zip[p - 30..p - 26] == *b"PK\x03\x04" {
            zip[p - 30 + 22..p - 30 + 26].copy_from_slice(&size.to_le_bytes());
        }
        if p >= 46 && zip[p - 46..p - 42] == *b"PK\x01\x02" {
            zip[p - 46 + 24..p - 46 + 28].copy_from_slice(&size.to_le_bytes());
        }
    }
}

#[test]
fn zip_member_declaring_too_much_is_a_bomb() {
    let mut o = opts();
    o.limits.max_entry_bytes = 1000;
    let e = refused(&zip_of(&with(E::File("bomb.bin", vec![0; 5000]))), &o);
    assert_refused(&e, "zip-bomb", "bomb.bin");
    assert!(e.to_string().contains("declares 4.8 KiB"), "{e}");
}

#[test]
fn zip_member_inflating_past_its_declared_size_stops_there() {
    // The zip crate inflates no further than the declared size (which the directory
    // check bounds) and fails the member: refused as a damaged archive, at that member.
    let mut o = opts();
    o.limits.max_entry_bytes = 1000;
    let mut z = zip_of(&with(E::File("cat/big.png", vec![0; 50_000])));
    patch_zip_size(&mut z, "cat/big.png", 100);
    let e = refused(&z, &o);
    assert!(["zip-bomb", "corrupt-archive"].contains(&e.kind()), "{e}");
    assert_eq!(e.at(), Some("cat/big.png"), "{e}");
}

#[test]
fn zip_members_over_the_total_are_a_bomb() {
    let mut o = opts();
    o.limits.max_unpacked_bytes = 3000;
    let entries = with(E::File("cat/x.bin", vec![0; 2990]));
    assert_eq!(refused(&zip_of(&entries), &o).kind(), "zip-bomb");
}

#[test]
fn too_many_members_are_refused() {
    let mut o = opts();
    o.limits.max_entries = 2;
    let e = refused(&zip_of(&with(E::Dir("bird/"))), &o);
    assert_eq!(e.kind(), "too-many-entries");
}

#[test]
fn tar_member_over_the_entry_limit_is_too_large() {
    let mut o = opts();
    o.limits.max_entry_bytes = 1000;
    let e = refused(&tar_of(&with(E::File("cat/big.png", vec![0; 5000]))), &o);
    assert_refused(&e, "too-large", "cat/big.png");
}

#[test]
fn tar_gz_inflating_past_the_total_is_a_bomb() {
    let mut o = opts();
    o.limits.max_unpacked_bytes = 8192;
    let mut entries = two_good();
    for name in ["cat/a.bin", "cat/b.bin", "cat/c.bin"] {
        entries.push(E::File(name, vec![0; 3000]));
    }
    let e = refused(&gzip(&tar_of(&entries)), &o);
    assert_eq!(e.kind(), "zip-bomb", "{e}");
}

#[test]
fn path_traversal_and_absolute_paths_are_refused() {
    for archive in [zip_of, tar_of] {
        let e = refused(
            &archive(&with(E::File("../evil.png", png_gray(4, 4, 0, 0)))),
            &opts(),
        );
        assert_refused(&e, "path-traversal", "../evil.png");
        assert_eq!(e.to_string(), "../evil.png: a path that leaves the archive");
        let e = refused(
            &archive(&with(E::File("cat/../../x.png", vec![1]))),
            &opts(),
        );
        assert_refused(&e, "path-traversal", "cat/../../x.png");
    }
    let e = refused(&tar_of(&with(E::File("/etc/x.png", vec![1]))), &opts());
    assert_refused(&e, "absolute-path", "/etc/x.png");
    let e = refused(&zip_of(&with(E::File("C:\\x\\y.png", vec![1]))), &opts());
    assert_refused(&e, "absolute-path", "C:\\x\\y.png");
    let e = refused(&zip_of(&with(E::File("\\x\\y.png", vec![1]))), &opts());
    assert_refused(&e, "absolute-path", "\\x\\y.png");
}

#[test]
fn links_are_refused() {
    let e = refused(
        &zip_of(&with(E::Symlink("cat/l.png", "/etc/passwd"))),
        &opts(),
    );
    assert_refused(&e, "link", "cat/l.png");
    let e = refused(
        &tar_of(&with(E::Symlink("cat/l.png", "/etc/passwd"))),
        &opts(),
    );
    assert_refused(&e, "link", "cat/l.png");
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar_header("cat/h.png", tar::EntryType::Link, 0);
    h.set_link_name("cat/1.png").unwrap();
    h.set_cksum();
    t.append(&h, std::io::empty()).unwrap();
    let e = refused(&t.into_inner().unwrap(), &opts());
    assert_refused(&e, "link", "cat/h.png");
    assert!(e.to_string().contains("hard link"), "{e}");
}

#[test]
fn devices_and_fifos_are_refused() {
    for kind in [
        tar::EntryType::Fifo,
        tar::EntryType::Char,
        tar::EntryType::Block,
    ] {
        let mut t = tar::Builder::new(Vec::new());
        t.append(&tar_header("cat/dev", kind, 0), std::io::empty())
            .unwrap();
        let e = refused(&t.into_inner().unwrap(), &opts());
        assert_refused(&e, "special-file", "cat/dev");
    }
}

#[test]
fn duplicate_names_are_refused() {
    let mut z = zip_of(&with(E::File("cat/2.png", png_gray(4, 4, 3, 3))));
    // Rename cat/2.png to cat/1.png in place (the writer refuses duplicates).
    let (from, to) = (b"cat/2.png", b"cat/1.png");
    for p in 0..z.len() - from.len() {
        if &z[p..p + from.len()] == from {
            z[p..p + to.len()].copy_from_slice(to);
        }
    }
    assert_refused(&refused(&z, &opts()), "duplicate-name", "cat/1.png");
    let t = tar_of(&with(E::File("cat/./1.png", png_gray(4, 4, 3, 3))));
    assert_refused(&refused(&t, &opts()), "duplicate-name", "cat/1.png");
}

#[test]
fn nested_archives_are_refused_by_name_and_by_content() {
    let inner = zip_of(&two_good());
    let e = refused(
        &zip_of(&with(E::File("cat/more.zip", inner.clone()))),
        &opts(),
    );
    assert_refused(&e, "nested-archive", "cat/more.zip");
    let e = refused(
        &tar_of(&with(E::File("cat/more.tar.gz", vec![1, 2]))),
        &opts(),
    );
    assert_refused(&e, "nested-archive", "cat/more.tar.gz");
    let e = refused(&zip_of(&with(E::File("cat/sneaky.png", inner))), &opts());
    assert_refused(&e, "nested-archive", "cat/sneaky.png");
    let e = refused(
        &zip_of(&with(E::File("cat/t.png", tar_of(&two_good())))),
        &opts(),
    );
    assert_refused(&e, "nested-archive", "cat/t.png");
}

#[test]
fn an_empty_class_folder_is_refused() {
    for archive in [zip_of, tar_of] {
        let e = refused(&archive(&with(E::Dir("bird/"))), &opts());
        assert_refused(&e, "empty-class", "bird");
        let e = refused(&archive(&with(E::File("bird/notes.txt", vec![1]))), &opts());
        assert_refused(&e, "empty-class", "bird");
    }
}

#[test]
fn a_single_class_is_refused() {
    let entries = [
        E::File("cat/1.png", png_gray(4, 4, 1, 1)),
        E::File("cat/2.png", png_gray(4, 4, 1, 1)),
    ];
    let e = refused(&zip_of(&entries), &opts());
    assert_eq!(e.kind(), "single-class");
    assert!(e.to_string().contains("cat"), "{e}");
}

#[test]
fn an_image_at_the_root_is_a_bad_layout() {
    let e = refused(
        &zip_of(&with(E::File("stray.png", png_gray(4, 4, 1, 1)))),
        &opts(),
    );
    assert_refused(&e, "bad-layout", "stray.png");
}

#[test]
fn a_test_class_missing_from_train_is_named() {
    let entries = [
        E::File("train/cat/1.png", png_gray(4, 4, 1, 1)),
        E::File("train/dog/1.png", png_gray(4, 4, 1, 1)),
        E::File("test/zebra/1.png", png_gray(4, 4, 1, 1)),
    ];
    assert_refused(
        &refused(&zip_of(&entries), &opts()),
        "bad-layout",
        "test/zebra",
    );
}

#[test]
fn truncated_archives_are_refused() {
    let z = zip_of(&gray_classes(2));
    assert_eq!(refused(&z[..z.len() / 2], &opts()).kind(), "truncated");

    let entries = with(E::File("cat/big.png", png_gray(64, 64, 5, 9)));
    let t = tar_of(&entries);
    // Cut inside the last member's data.
    let cut = t.len() - 1024 - 512;
    let e = refused(&t[..cut], &opts());
    assert_eq!(e.kind(), "truncated", "{e}");
    // Cut at a member boundary: no end-of-archive block.
    let plain = tar_of(&two_good());
    let e = refused(&plain[..plain.len() - 1024], &opts());
    assert_eq!(e.kind(), "truncated", "{e}");

    let gz = gzip(&t);
    let e = refused(&gz[..gz.len() / 2], &opts());
    assert_eq!(e.kind(), "truncated", "{e}");
}

#[test]
fn corrupt_images_are_named() {
    let mut png = png_gray(4, 4, 1, 1);
    png.truncate(png.len() - 15);
    let e = refused(&zip_of(&with(E::File("cat/003.png", png))), &opts());
    assert_refused(&e, "corrupt-image", "cat/003.png");
    assert!(e.to_string().starts_with("cat/003.png: "), "{e}");
    let e = refused(
        &zip_of(&with(E::File("cat/004.png", b"hello".to_vec()))),
        &opts(),
    );
    assert_refused(&e, "corrupt-image", "cat/004.png");
}

#[test]
fn bytes_that_are_no_archive_are_refused() {
    let e = refused(&png_gray(4, 4, 1, 1), &opts());
    assert_eq!(e.kind(), "not-an-archive");
    assert_eq!(refused(&gzip(b"hello"), &opts()).kind(), "truncated");
}

#[test]
fn too_many_samples_and_classes_are_refused() {
    let mut o = opts();
    o.limits.max_samples = 5;
    assert_eq!(
        refused(&zip_of(&gray_classes(2)), &o).kind(),
        "too-many-samples"
    );
    let mut o = opts();
    o.limits.max_classes = 2;
    assert_eq!(
        refused(&zip_of(&gray_classes(2)), &o).kind(),
        "too-many-classes"
    );
    let mut o = opts();
    o.limits.max_decoded_bytes = 16 * 5;
    assert_eq!(refused(&zip_of(&gray_classes(2)), &o).kind(), "too-large");
}

// ---- IDX ---------------------------------------------------------------------------

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn decode_idx(
    images: &[u8],
    labels: &[u8],
    test: Option<(&[u8], &[u8])>,
    opts: &Options,
) -> Result<Decoded, UploadError> {
    let (i, l) = (spool(images), spool(labels));
    let t = test.map(|(a, b)| (spool(a), spool(b)));
    decode(
        Input::Idx {
            train_images: i.path(),
            train_labels: l.path(),
            test_images: t.as_ref().map(|t| t.0.path()),
            test_labels: t.as_ref().map(|t| t.1.path()),
        },
        opts,
    )
}

#[test]
fn idx_pair_raw_and_gzip_decode_the_same() {
    let pixels: Vec<u8> = (0..10 * 4).map(|i| i as u8).collect();
    let labels = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1];
    let images = idx(&[10, 2, 2], &pixels);
    let labels = idx(&[10], &labels);
    let raw = decode_idx(&images, &labels, None, &opts()).unwrap();
    let gz = decode_idx(&gzip(&images), &gzip(&labels), None, &opts()).unwrap();
    assert_eq!(raw.sha256(), gz.sha256());
    assert_eq!(raw.format, Format::Idx);
    assert_eq!(raw.class_names, ["0", "1"]);
    assert_eq!((raw.train.len, raw.test.len), (8, 2));
    // File order kept: train is samples 0..10 minus the held-out ones, in order.
    let firsts: Vec<u8> = (0..raw.train.len).map(|i| raw.train.image(i)[0]).collect();
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{firsts:?}");
}

#[test]
fn idx_count_mismatch_names_both_parts() {
    let images = idx(&[3, 2, 2], &[0; 12]);
    let labels = idx(&[2], &[0, 1]);
    let e = decode_idx(&images, &labels, None, &opts()).unwrap_err();
    assert_eq!(e.kind(), "count-mismatch");
    assert_eq!(e.at(), Some("train_images"));
    let text = e.to_string();
    assert!(
        text.contains("train_labels") && text.contains('3') && text.contains('2'),
        "{text}"
    );
}

#[test]
fn idx_garbage_and_truncation_name_the_part() {
    let labels = idx(&[2], &[0, 1]);
    let e = decode_idx(b"hello world!", &labels, None, &opts()).unwrap_err();
    assert_refused(&e, "bad-idx", "train_images");
    let e = decode_idx(&idx(&[2, 2, 2], &[0; 5]), &labels, None, &opts()).unwrap_err();
    assert_refused(&e, "truncated", "train_images");
}

#[test]
fn idx4_rgb_is_stored_chw() {
    // 2 images of 1x2 pixels, 3 channels, HWC: (r, g, b) per pixel.
    let pixels = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
    let images = idx(&[2, 1, 2, 3], &pixels);
    let labels = idx(&[2], &[0, 1]);
    let t_images = idx(&[2, 1, 2, 3], &pixels);
    let t_labels = idx(&[2], &[1, 0]);
    let d = decode_idx(&images, &labels, Some((&t_images, &t_labels)), &opts()).unwrap();
    assert_eq!(d.train.channels, 3);
    assert_eq!(d.train.image(0), [1, 4, 2, 5, 3, 6]);
    assert_eq!(d.test_split, TestSplit::Uploaded);
    let gray = decode_idx(
        &images,
        &labels,
        None,
        &Options {
            channels: Some(1),
            test_fraction: 0.5,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(gray.train.channels, 1);
}

#[test]
fn idx_labels_out_of_range_and_gaps_are_refused() {
    let images = idx(&[3, 1, 1], &[0; 3]);
    let names = Options {
        class_names: Some(vec!["a".into(), "b".into()]),
        ..opts()
    };
    let e = decode_idx(&images, &idx(&[3], &[0, 1, 2]), None, &names).unwrap_err();
    assert_refused(&e, "label-out-of-range", "train_labels");
    assert!(e.to_string().contains("sample 2 has label 2"), "{e}");
    let e = decode_idx(&images, &idx(&[3], &[0, 2, 2]), None, &opts()).unwrap_err();
    assert_refused(&e, "empty-class", "train_labels");
    let e = decode_idx(&images, &idx(&[3], &[0, 0, 0]), None, &opts()).unwrap_err();
    assert_eq!(e.kind(), "single-class");
}

#[test]
fn idx_test_pair_needs_both_parts() {
    let images = idx(&[2, 1, 1], &[0; 2]);
    let labels = idx(&[2], &[0, 1]);
    let (i, l) = (spool(&images), spool(&labels));
    let e = decode(
        Input::Idx {
            train_images: i.path(),
            train_labels: l.path(),
            test_images: Some(i.path()),
            test_labels: None,
        },
        &opts(),
    )
    .unwrap_err();
    assert_refused(&e, "missing-part", "test_labels");
}

// ---- CSV ---------------------------------------------------------------------------

fn decode_csv(train: &str, test: Option<&str>, opts: &Options) -> Result<Decoded, UploadError> {
    let a = spool(train.as_bytes());
    let b = test.map(|t| spool(t.as_bytes()));
    decode(
        Input::Csv {
            train: a.path(),
            test: b.as_ref().map(|b| b.path()),
        },
        opts,
    )
}

#[test]
fn csv_with_and_without_header_decode_the_same() {
    let body = "0,1,2,3,4\n1,5,6,7,8\n0,9,10,11,12\n1,13,14,15,16\n";
    let with_header = format!("label,p0,p1,p2,p3\r\n{}", body.replace('\n', "\r\n"));
    let a = decode_csv(body, None, &opts()).unwrap();
    let b = decode_csv(&with_header, None, &opts()).unwrap();
    assert_eq!(a.sha256(), b.sha256());
    assert_eq!((a.train.rows, a.train.cols, a.train.channels), (2, 2, 1));
    assert_eq!(a.format, Format::Csv);
    assert_eq!(a.train.len + a.test.len, 4);
}

#[test]
fn csv_bad_value_names_line_and_column() {
    let e = decode_csv("l,a,b,c,d\n0,1,2,3,4\n1,5,x7,7,8\n", None, &opts()).unwrap_err();
    assert_refused(&e, "bad-csv", "train, line 3, column 3");
    assert!(e.to_string().contains("x7"), "{e}");
    let e = decode_csv("0,1,2,3,4\n1,5,6,7,256\n", None, &opts()).unwrap_err();
    assert_refused(&e, "bad-csv", "train, line 2, column 5");
}

#[test]
fn csv_wrong_field_count_names_the_line_and_both_counts() {
    let e = decode_csv("0,1,2,3,4\n1,5,6,7\n", None, &opts()).unwrap_err();
    assert_refused(&e, "bad-csv", "train, line 2");
    let text = e.to_string();
    assert!(
        text.contains("4 fields") && text.contains("must have 5"),
        "{text}"
    );
    let e = decode_csv("0,1,2,3,4\n1,5,6,7,8\n", Some("1,1,2\n"), &opts()).unwrap_err();
    assert_refused(&e, "bad-csv", "test, line 1");
}

#[test]
fn csv_non_square_rows_need_size() {
    let e = decode_csv("0,1,2,3\n1,4,5,6\n", None, &opts()).unwrap_err();
    assert_eq!(e.kind(), "size-required");
    let d = decode_csv(
        "0,1,2,3\n1,4,5,6\n",
        None,
        &Options {
            size: Some((1, 3)),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!((d.train.rows, d.train.cols), (1, 3));
}

#[test]
fn csv_rgb_rows_are_hwc_and_stored_chw() {
    // 1x2 pixels: (1, 2, 3) then (4, 5, 6).
    let d = decode_csv(
        "0,1,2,3,4,5,6\n1,7,8,9,10,11,12\n",
        Some("0,1,2,3,4,5,6\n"),
        &Options {
            channels: Some(3),
            size: Some((1, 2)),
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(d.train.image(0), [1, 4, 2, 5, 3, 6]);
    assert_eq!(d.test.image(0), [1, 4, 2, 5, 3, 6]);
    assert_eq!(d.test_split, TestSplit::Uploaded);
}

#[test]
fn csv_test_label_beyond_train_classes_is_out_of_range() {
    let e = decode_csv("0,1\n1,2\n", Some("0,1\n5,1\n"), &opts()).unwrap_err();
    assert_refused(&e, "label-out-of-range", "test, line 2, column 1");
}

#[test]
fn options_out_of_range_are_bad_options() {
    let body = "0,1\n1,2\n";
    for o in [
        Options {
            test_fraction: 1.0,
            ..opts()
        },
        Options {
            channels: Some(2),
            ..opts()
        },
        Options {
            size: Some((0, 4)),
            ..opts()
        },
    ] {
        assert_eq!(decode_csv(body, None, &o).unwrap_err().kind(), "bad-option");
    }
}
