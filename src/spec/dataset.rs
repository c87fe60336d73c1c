//! The spec's `dataset`: which data (a built-in name, an uploaded dataset's id, or a
//! local path for `trainyard train`), how much of it, and how each image is prepared.
//!
//! Exactly one source is named. The spec reads it as three optional fields, which is
//! what a user writes (`{"name": "mnist"}`, `{"id": "..."}`, `{"path": "digits.zip"}`),
//! but the program holds it as one [`DataSource`], so no code downstream can meet a spec
//! that names two sources or none: that is refused while the JSON is read, at `dataset`.
//!
//! What a source gives a model (its images' shape, its classes and their names) is a
//! [`DataInfo`]; the built-in datasets' are written here, once.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::DataShape;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    Mnist,
    FashionMnist,
}

/// Fashion-MNIST's class names, by label (Zalando's README).
const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

impl DatasetName {
    /// Images in the dataset's training set.
    pub fn train_len(self) -> usize {
        match self {
            DatasetName::Mnist | DatasetName::FashionMnist => 60_000,
        }
    }

    pub fn test_len(self) -> usize {
        match self {
            DatasetName::Mnist | DatasetName::FashionMnist => 10_000,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion-mnist",
        }
    }

    /// What the built-in dataset gives a model.
    pub fn info(self) -> DataInfo {
        let class_names = match self {
            DatasetName::Mnist => (0..10).map(|d| d.to_string()).collect(),
            DatasetName::FashionMnist => FASHION_CLASSES.iter().map(|s| s.to_string()).collect(),
        };
        DataInfo {
            channels: 1,
            height: 28,
            width: 28,
            class_names,
            train_len: self.train_len(),
            test_len: self.test_len(),
            sha256: None,
        }
    }
}

/// Where a spec's data comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DataSource {
    /// MNIST or Fashion-MNIST from the data folder.
    BuiltIn(DatasetName),
    /// A dataset uploaded with `POST /datasets`, by its id.
    Uploaded(Uuid),
    /// A class-folder archive or folder, IDX pair or CSV on this machine
    /// (`trainyard train` only; the service refuses it).
    Path(String),
}

/// What a dataset gives a model: its images' shape (before the spec's resize), its
/// classes' names by label, and how many training images it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataInfo {
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// By label: `class_names[label]`.
    pub class_names: Vec<String>,
    pub train_len: usize,
    /// How many test images it has.
    #[serde(default)]
    pub test_len: usize,
    /// The content address of an uploaded dataset's tensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl DataInfo {
    pub fn shape(&self) -> DataShape {
        DataShape {
            channels: self.channels,
            height: self.height,
            width: self.width,
            classes: self.class_names.len(),
        }
    }

    /// The name of `label`'s class (the label itself past the known names).
    pub fn class_name(&self, label: usize) -> String {
        self.class_names
            .get(label)
            .cloned()
            .unwrap_or_else(|| label.to_string())
    }
}

/// The spec's `dataset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "DatasetFields", into = "DatasetFields")]
pub struct DatasetSpec {
    pub source: DataSource,
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
    pub resize: Option<[u32; 2]>,
    pub normalize: Option<Normalize>,
    pub validation: Validation,
}

impl DatasetSpec {
    /// The built-in dataset, if the spec names one.
    pub fn built_in(&self) -> Option<DatasetName> {
        match self.source {
            DataSource::BuiltIn(n) => Some(n),
            _ => None,
        }
    }
}

/// The `dataset` object as JSON has it: one of `name`, `id` and `path`, and the rest.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "DatasetSpec")]
struct DatasetFields {
    /// A built-in dataset. Give exactly one of `name`, `id` and `path`. A server refuses
    /// one its data folder lacks (Fashion-MNIST is optional in the image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<DatasetName>,
    /// An uploaded dataset (`POST /datasets`) of the submitting account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<Uuid>,
    /// A class-folder archive or folder, an IDX images file (its labels beside it) or a
    /// CSV on this machine: `trainyard train` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    /// Use only the first N training samples (before the validation split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    train_limit: Option<usize>,
    /// Use only the first N test samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    test_limit: Option<usize>,
    /// Resize every image to `[h, w]` with PIL's antialiased bilinear filter on u8 pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resize: Option<[u32; 2]>,
    /// `(x / 255 - mean) / std`, per channel; absent: plain `x / 255`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    normalize: Option<Normalize>,
    /// What the validation metrics are measured on, if anything.
    #[serde(default)]
    validation: Validation,
}

impl TryFrom<DatasetFields> for DatasetSpec {
    type Error = String;

    fn try_from(f: DatasetFields) -> Result<Self, String> {
        let source = match (f.name, f.id, f.path) {
            (Some(n), None, None) => DataSource::BuiltIn(n),
            (None, Some(id), None) => DataSource::Uploaded(id),
            (None, None, Some(p)) => DataSource::Path(p),
            (None, None, None) => {
                return Err(
                    "name the data: one of `name` (a built-in dataset), `id` (an \
                            uploaded one) or `path` (a local one)"
                        .into(),
                );
            }
            _ => {
                return Err(
                    "give only one of `name`, `id` and `path`: they each name the data".into(),
                );
            }
        };
        Ok(DatasetSpec {
            source,
            train_limit: f.train_limit,
            test_limit: f.test_limit,
            resize: f.resize,
            normalize: f.normalize,
            validation: f.validation,
        })
    }
}

impl From<DatasetSpec> for DatasetFields {
    fn from(d: DatasetSpec) -> Self {
        let (mut name, mut id, mut path) = (None, None, None);
        match d.source {
            DataSource::BuiltIn(n) => name = Some(n),
            DataSource::Uploaded(u) => id = Some(u),
            DataSource::Path(p) => path = Some(p),
        }
        DatasetFields {
            name,
            id,
            path,
            train_limit: d.train_limit,
            test_limit: d.test_limit,
            resize: d.resize,
            normalize: d.normalize,
            validation: d.validation,
        }
    }
}

impl schemars::JsonSchema for DatasetSpec {
    fn schema_name() -> Cow<'static, str> {
        DatasetFields::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        DatasetFields::json_schema(generator)
    }
}

/// `(x / 255 - mean) / std`, each a number for every channel or a list with one per
/// channel (as torchvision's `Normalize`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    pub mean: PerChannel,
    pub std: PerChannel,
}

/// One value for every channel, or one per channel.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum PerChannel {
    All(f64),
    Each(Vec<f64>),
}

impl PerChannel {
    /// The value for channel `c` (the last one given past the list's end).
    pub fn get(&self, c: usize) -> f64 {
        match self {
            PerChannel::All(v) => *v,
            PerChannel::Each(v) => v.get(c).or(v.last()).copied().unwrap_or(f64::NAN),
        }
    }

    /// Every value given.
    pub fn values(&self) -> &[f64] {
        match self {
            PerChannel::All(v) => std::slice::from_ref(v),
            PerChannel::Each(v) => v,
        }
    }

    /// How many channels it names (`None`: any number).
    pub fn channels(&self) -> Option<usize> {
        match self {
            PerChannel::All(_) => None,
            PerChannel::Each(v) => Some(v.len()),
        }
    }
}

impl<'de> Deserialize<'de> for PerChannel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            All(f64),
            Each(Vec<f64>),
        }
        match Raw::deserialize(d) {
            Ok(Raw::All(v)) => Ok(PerChannel::All(v)),
            Ok(Raw::Each(v)) => Ok(PerChannel::Each(v)),
            Err(_) => Err(serde::de::Error::custom(
                "expected a number, or a list of numbers with one per channel",
            )),
        }
    }
}

/// Where per-epoch validation metrics come from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Validation {
    /// The last `split` fraction of the training set, taken before any shuffling (Keras's
    /// `validation_split`).
    Split { split: f64 },
    /// `"test"` evaluates on the test set each epoch (as the PyTorch article does); `"none"`
    /// keeps the whole training set and reports no validation metrics.
    Named(ValidationName),
}

impl Default for Validation {
    fn default() -> Self {
        Validation::Named(ValidationName::None)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ValidationName {
    Test,
    None,
}

impl Validation {
    /// Fraction of the training set held out, if any.
    pub fn split(&self) -> Option<f64> {
        match self {
            Validation::Split { split } => Some(*split),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Validation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Split { split: f64 },
            Named(ValidationName),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Split { split }) => Ok(Validation::Split { split }),
            Ok(Raw::Named(n)) => Ok(Validation::Named(n)),
            Err(_) => Err(serde::de::Error::custom(
                r#"expected {"split": fraction}, "test" or "none""#,
            )),
        }
    }
}
