//! Datasets and preprocessing: IDX files with verified checksums, optional download from
//! mirrors, PIL-exact resizing, normalisation, and the train/validation/test split.

pub mod idx;
pub mod image;
pub mod local;
pub mod mnist;
pub mod prepare;
pub mod resize;
pub mod upload;
