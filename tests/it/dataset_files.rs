//! Loading MNIST from the IDX files of the data folder, checksum and missing-file errors, and
//! downloading from mirrors (a tiny HTTP server on 127.0.0.1; these tests never leave the
//! machine).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use trainyard::data::mnist::{
    self, DataError, FASHION_MNIST_MIRRORS, MNIST_MIRRORS, Source, default_mirrors,
};
use trainyard::spec::DatasetName;

use crate::common;

const FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

const MNIST_TRAIN_LABELS_SHA256: &str =
    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5";

fn shared_gz(file: &str) -> PathBuf {
    common::data_dir().join("mnist").join(format!("{file}.gz"))
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A temporary data folder with an empty `mnist/` in it.
fn temp_data_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let mnist_dir = tmp.path().join("mnist");
    std::fs::create_dir(&mnist_dir).unwrap();
    (tmp, mnist_dir)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn loads_mnist_from_shared_data_with_expected_counts_and_labels() {
    let start = Instant::now();
    let data = mnist::load(DatasetName::Mnist, &Source::offline(common::data_dir())).unwrap();
    eprintln!("MNIST loaded and verified in {:?}", start.elapsed());

    assert_eq!(data.class_names.len(), 10);
    for (split, len) in [(&data.train, 60_000), (&data.test, 10_000)] {
        assert_eq!((split.len, split.rows, split.cols), (len, 28, 28));
        assert_eq!(split.images.len(), len * 28 * 28);
        assert_eq!(split.labels.len(), len);
    }
    assert_eq!(
        data.train.label_counts(),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        data.test.label_counts(),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    // The first training image is a 5 with ink in the middle and a blank border.
    assert_eq!(data.train.labels[0], 5);
    let first = data.train.image(0);
    assert!(first[..28].iter().all(|&p| p == 0));
    assert!(first.contains(&255));
}

#[test]
fn uncompressed_files_load_like_gzipped_ones() {
    let (tmp, dir) = temp_data_dir();
    for file in &FILES[..2] {
        std::fs::copy(shared_gz(file), dir.join(format!("{file}.gz"))).unwrap();
    }
    for file in &FILES[2..] {
        let raw = gunzip(&std::fs::read(shared_gz(file)).unwrap());
        std::fs::write(dir.join(file), raw).unwrap();
    }
    let data = mnist::load(DatasetName::Mnist, &Source::offline(tmp.path())).unwrap();
    assert_eq!((data.train.len, data.test.len), (60_000, 10_000));
    assert_eq!(data.test.label_counts()[0], 980);
}

#[test]
fn corrupted_file_is_rejected_with_checksum_error_naming_the_file() {
    let (tmp, dir) = temp_data_dir();
    for file in FILES {
        std::fs::copy(shared_gz(file), dir.join(format!("{file}.gz"))).unwrap();
    }
    // Flip one label in the decompressed content; the gzip itself stays valid.
    let path = dir.join("train-labels-idx1-ubyte.gz");
    let mut raw = gunzip(&std::fs::read(&path).unwrap());
    raw[8 + 1234] ^= 0x01;
    std::fs::write(&path, gzip(&raw)).unwrap();

    let err = mnist::load(DatasetName::Mnist, &Source::offline(tmp.path())).unwrap_err();
    let msg = err.to_string();
    match &err {
        DataError::Checksum {
            file,
            expected,
            actual,
            ..
        } => {
            assert_eq!(*file, "train-labels-idx1-ubyte");
            assert_eq!(*expected, MNIST_TRAIN_LABELS_SHA256);
            assert_ne!(actual, expected);
            assert!(msg.contains(actual.as_str()), "{msg}");
        }
        other => panic!("expected a checksum error, got {other:?}: {other}"),
    }
    assert!(msg.contains("train-labels-idx1-ubyte"), "{msg}");
    assert!(msg.contains(MNIST_TRAIN_LABELS_SHA256), "{msg}");
}

#[test]
fn missing_file_with_downloads_off_says_where_to_put_it() {
    let (tmp, dir) = temp_data_dir();
    for file in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"] {
        std::fs::copy(shared_gz(file), dir.join(format!("{file}.gz"))).unwrap();
    }
    std::fs::copy(
        shared_gz("t10k-labels-idx1-ubyte"),
        dir.join("t10k-labels-idx1-ubyte.gz"),
    )
    .unwrap();
    // Mirrors are set but downloads are off: nothing may be fetched.
    let server = MirrorServer::start();
    let source = Source {
        data_dir: tmp.path().to_path_buf(),
        mirrors: vec![server.url("good")],
        download: false,
    };

    let err = mnist::load(DatasetName::Mnist, &source).unwrap_err();
    let msg = err.to_string();
    let expected_path = dir.join("t10k-images-idx3-ubyte.gz");
    match &err {
        DataError::Missing {
            file,
            gz_path,
            download,
            tried,
            ..
        } => {
            assert_eq!(*file, "t10k-images-idx3-ubyte");
            assert!(gz_path.is_absolute());
            assert_eq!(gz_path, &expected_path);
            assert!(!download);
            assert!(tried.is_empty());
        }
        other => panic!("expected a missing-file error, got {other:?}: {other}"),
    }
    assert!(msg.contains("t10k-images-idx3-ubyte"), "{msg}");
    assert!(
        msg.contains(&expected_path.display().to_string()),
        "{msg} should name {}",
        expected_path.display()
    );
    assert!(msg.contains("downloads are off"), "{msg}");
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    assert_eq!(files_in(&dir).len(), 3);
}

#[test]
fn download_skips_failing_mirrors_and_keeps_only_verified_files() {
    let (tmp, dir) = temp_data_dir();
    let server = MirrorServer::start();
    let source = Source {
        data_dir: tmp.path().to_path_buf(),
        mirrors: vec![
            server.url("missing"),
            server.url("corrupt"),
            server.url("good/"),
        ],
        download: true,
    };

    let data = mnist::load(DatasetName::Mnist, &source).unwrap();
    assert_eq!((data.train.len, data.test.len), (60_000, 10_000));
    assert_eq!(data.train.label_counts()[1], 6742);

    // Each file was asked of each mirror in order, and the good mirror's gzip was kept.
    let requests = server.requests();
    for file in FILES {
        let asked: Vec<&str> = requests
            .iter()
            .filter(|r| r.ends_with(&format!("/{file}.gz")))
            .map(|r| r.split('/').nth(1).unwrap())
            .collect();
        assert_eq!(
            asked,
            ["missing", "corrupt", "good"],
            "{file}: {requests:?}"
        );
        assert_eq!(
            std::fs::read(dir.join(format!("{file}.gz"))).unwrap(),
            std::fs::read(shared_gz(file)).unwrap(),
            "{file}"
        );
    }
    let expected: Vec<String> = {
        let mut v: Vec<String> = FILES.iter().map(|f| format!("{f}.gz")).collect();
        v.sort();
        v
    };
    assert_eq!(
        files_in(&dir),
        expected,
        "no temporary or rejected files left"
    );

    // What was kept verifies on its own, with no network.
    let again = mnist::load(DatasetName::Mnist, &Source::offline(tmp.path())).unwrap();
    assert_eq!(again, data);
}

#[test]
fn download_from_only_bad_mirrors_reports_each_mirror_and_keeps_nothing() {
    let (tmp, dir) = temp_data_dir();
    let server = MirrorServer::start();
    // A port nobody listens on any more: connection refused.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", l.local_addr().unwrap())
    };
    let mirrors = vec![server.url("missing"), server.url("corrupt"), closed.clone()];
    let source = Source {
        data_dir: tmp.path().to_path_buf(),
        mirrors: mirrors.clone(),
        download: true,
    };

    let err = mnist::load(DatasetName::Mnist, &source).unwrap_err();
    let msg = err.to_string();
    let DataError::Missing {
        file,
        download,
        tried,
        ..
    } = &err
    else {
        panic!("expected a missing-file error, got {err:?}: {err}");
    };
    assert_eq!(*file, "train-images-idx3-ubyte");
    assert!(download);
    let urls: Vec<&str> = tried.iter().map(|t| t.url.as_str()).collect();
    assert_eq!(
        urls,
        mirrors
            .iter()
            .map(|m| format!("{}/train-images-idx3-ubyte.gz", m.trim_end_matches('/')))
            .collect::<Vec<_>>()
    );
    assert!(tried[0].error.contains("404"), "{:?}", tried[0]);
    assert!(
        tried[1].error.contains("decompressing"),
        "truncated gzip: {:?}",
        tried[1]
    );
    assert!(!tried[2].error.is_empty());
    for t in tried {
        assert!(msg.contains(&t.url), "{msg}");
    }
    assert!(
        msg.contains(&dir.join("train-images-idx3-ubyte.gz").display().to_string()),
        "{msg}"
    );
    assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
}

#[test]
fn corrupt_download_fails_with_the_checksum_and_is_not_kept() {
    let (tmp, dir) = temp_data_dir();
    let server = MirrorServer::start();
    // Only the labels are needed to see the error: provide the images.
    for file in ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"] {
        std::fs::copy(shared_gz(file), dir.join(format!("{file}.gz"))).unwrap();
    }
    let source = Source {
        data_dir: tmp.path().to_path_buf(),
        mirrors: vec![server.url("corrupt")],
        download: true,
    };
    let err = mnist::load(DatasetName::Mnist, &source).unwrap_err();
    let DataError::Missing { tried, .. } = &err else {
        panic!("expected a missing-file error, got {err:?}: {err}");
    };
    assert_eq!(tried.len(), 1);
    assert!(tried[0].error.contains("checksum mismatch"), "{tried:?}");
    assert!(
        tried[0].error.contains(MNIST_TRAIN_LABELS_SHA256),
        "{tried:?}"
    );
    assert_eq!(
        files_in(&dir),
        ["t10k-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz"]
    );
}

#[test]
fn default_source_uses_each_datasets_own_mirrors() {
    let s = Source::new("somewhere");
    assert!(s.download);
    assert_eq!(s.mirrors_for(DatasetName::Mnist), MNIST_MIRRORS);
    assert_eq!(
        s.mirrors_for(DatasetName::FashionMnist),
        FASHION_MNIST_MIRRORS
    );
    assert_eq!(
        default_mirrors(DatasetName::FashionMnist),
        FASHION_MNIST_MIRRORS
    );
    let custom = Source {
        mirrors: vec!["http://127.0.0.1:1/x/".into()],
        ..s.clone()
    };
    assert_eq!(
        custom.mirrors_for(DatasetName::FashionMnist),
        ["http://127.0.0.1:1/x/"]
    );
    let off = Source {
        download: false,
        ..s
    };
    assert!(off.mirrors_for(DatasetName::Mnist).is_empty());
    assert!(
        Source::offline("x")
            .mirrors_for(DatasetName::Mnist)
            .is_empty()
    );
}

/// Needs Debian's `dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist).
#[test]
#[ignore = "needs the dataset-fashion-mnist Debian package"]
fn loads_fashion_mnist_from_the_debian_package() {
    let data = mnist::load(
        DatasetName::FashionMnist,
        &Source::offline("/usr/share/datasets"),
    )
    .unwrap();
    assert_eq!(data.train.label_counts(), [6000; 10]);
    assert_eq!(data.test.label_counts(), [1000; 10]);
}

/// An HTTP server on 127.0.0.1 with three mirrors of MNIST's files:
/// `/missing/` answers 404, `/corrupt/` serves gzips whose content is wrong (labels with a
/// flipped byte, images cut in half), `/good/` serves the files from shared data.
struct MirrorServer {
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl MirrorServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let log = log2.clone();
                std::thread::spawn(move || handle(stream, &log));
            }
        });
        MirrorServer { addr, log }
    }

    fn url(&self, mirror: &str) -> String {
        format!("http://{}/{mirror}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn handle(stream: TcpStream, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    log.lock().unwrap().push(path.clone());
    let body = mirror_body(&path);
    let mut stream = stream;
    let head = match &body {
        Some(b) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-gzip\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            b.len()
        ),
        None => {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
        }
    };
    let _ = stream.write_all(head.as_bytes());
    if let Some(b) = body {
        let _ = stream.write_all(&b);
    }
    let _ = stream.flush();
}

fn mirror_body(path: &str) -> Option<Vec<u8>> {
    let (mirror, name) = path.trim_start_matches('/').split_once('/')?;
    let file = FILES.into_iter().find(|f| name == format!("{f}.gz"))?;
    match mirror {
        "good" => std::fs::read(shared_gz(file)).ok(),
        "corrupt" => Some(corrupt_gz(file).clone()),
        _ => None,
    }
}

/// The corrupt mirror's gzip of `file`, made once per file.
fn corrupt_gz(file: &str) -> &'static Vec<u8> {
    static CACHE: [OnceLock<Vec<u8>>; 4] = [const { OnceLock::new() }; 4];
    let i = FILES.iter().position(|f| *f == file).unwrap();
    CACHE[i].get_or_init(|| {
        let gz = std::fs::read(shared_gz(file)).unwrap();
        if file.contains("labels") {
            let mut raw = gunzip(&gz);
            raw[8] ^= 0x01;
            gzip(&raw)
        } else {
            gz[..gz.len() / 2].to_vec()
        }
    })
}

/// The image build checks its datasets with a shell script before any compile, so it
/// cannot call this crate: its sums, file names and MNIST mirrors must stay those of
/// `src/data/mnist.rs`.
#[test]
fn the_image_builds_data_check_uses_this_crates_sums_and_mirrors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/data");
    let sums = std::fs::read_to_string(root.join("SHA256SUMS")).unwrap();
    let mut want = String::new();
    for name in [DatasetName::Mnist, DatasetName::FashionMnist] {
        for f in mnist::files(name) {
            want.push_str(&format!("{}  {}/{}\n", f.sha256, name.as_str(), f.name));
        }
    }
    assert_eq!(sums, want, "docker/data/SHA256SUMS is stale");
    let script = std::fs::read_to_string(root.join("check.sh")).unwrap();
    let line = |var: &str| {
        script
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{var}=\"")))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or_else(|| panic!("no {var}= in check.sh"))
            .to_string()
    };
    assert_eq!(line("MNIST_MIRRORS"), MNIST_MIRRORS.join(" "));
    assert_eq!(line("FILES"), FILES.join(" "));
}
