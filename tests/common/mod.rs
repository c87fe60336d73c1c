//! Shared test helpers: the real MNIST files from the shared data folder, loaded once.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use trainyard::data::mnist::{self, Dataset, Source};
use trainyard::spec::DatasetName;

/// The data folder CI and developers have beside the repository (never the network).
pub fn data_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data"))
}

pub fn mnist() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| mnist::load(DatasetName::Mnist, &Source::offline(data_dir())).unwrap())
}
pub mod browser;
pub mod procs;
pub mod service;
