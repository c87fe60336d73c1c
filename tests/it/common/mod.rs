//! Shared test helpers: the real MNIST files of the data folder, loaded once.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use trainyard::data::mnist::{self, Dataset, Source};
use trainyard::spec::DatasetName;

/// The datasets the tests read (never the network): `TRAINYARD_DATA_DIR` when set, as
/// `tests/run.sh` sets it, else the shared folder beside the repository.
pub fn data_dir() -> PathBuf {
    match std::env::var_os("TRAINYARD_DATA_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data")),
    }
}

pub fn mnist() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| mnist::load(DatasetName::Mnist, &Source::offline(data_dir())).unwrap())
}
pub mod browser;
pub mod procs;
pub mod service;
pub mod training;
