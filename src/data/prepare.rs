//! From raw u8 images to the float tensors a model trains on, exactly as the seed models'
//! frameworks prepare them.
//!
//! Order matters and is fixed: `train_limit` takes the first N training samples, the
//! validation split takes the last fraction of those (Keras's `validation_split`, before any
//! shuffling), then each image is resized on its u8 pixels with PIL's bilinear filter (as
//! torchvision's `Resize` on a PIL image) and scaled to floats as `ToTensor` (`x / 255`) and
//! `Normalize` (`(x - mean) / std`) compute them, in f32.

use super::mnist::{Dataset, Split};
use super::resize::Resizer;
use crate::spec::{DataInfo, DatasetSpec, Normalize};

/// Preprocessed samples: `x` is `len * c * h * w` floats (CHW per sample), `y` the labels.
#[derive(Debug, Clone)]
pub struct Samples {
    pub x: Vec<f32>,
    pub y: Vec<u8>,
    pub len: usize,
}

/// Everything a training run reads, preprocessed once.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub train: Samples,
    pub val: Option<Samples>,
    pub test: Samples,
    /// Model input `[channels, height, width]`.
    pub shape: [usize; 3],
    /// The dataset's images before the spec's resize, and its classes.
    pub info: DataInfo,
}

/// The per-image preprocessing of a spec, also used at inference.
#[derive(Debug, Clone)]
pub struct Preprocess {
    channels: usize,
    src: (usize, usize),
    resizer: Option<Resizer>,
    out: (usize, usize),
    normalize: Option<Normalize>,
}

impl Preprocess {
    /// Preprocessing for `channels x src_h x src_w` images under a dataset spec.
    pub fn new(spec: &DatasetSpec, channels: usize, src_h: usize, src_w: usize) -> Self {
        let out = spec
            .resize
            .map(|[h, w]| (h as usize, w as usize))
            .unwrap_or((src_h, src_w));
        let resizer = (out != (src_h, src_w)).then(|| Resizer::new(src_h, src_w, out.0, out.1));
        Preprocess {
            channels,
            src: (src_h, src_w),
            resizer,
            out,
            normalize: spec.normalize.clone(),
        }
    }

    /// Output `(height, width)`.
    pub fn output_size(&self) -> (usize, usize) {
        self.out
    }

    /// Appends the preprocessed floats of `n` u8 images (CHW, each plane row-major) to
    /// `dst`. Each channel's plane is resized on its own, as PIL resizes each band.
    pub fn extend(&self, images: &[u8], dst: &mut Vec<f32>) {
        let (sh, sw) = self.src;
        let (oh, ow) = self.out;
        assert_eq!(
            images.len() % (self.channels * sh * sw),
            0,
            "image buffer size"
        );
        let mut buf = vec![0u8; oh * ow];
        dst.reserve(images.len() / (sh * sw) * oh * ow);
        for (plane, img) in images.chunks_exact(sh * sw).enumerate() {
            let px: &[u8] = match &self.resizer {
                Some(r) => {
                    r.resize(img, &mut buf);
                    &buf
                }
                None => img,
            };
            match &self.normalize {
                Some(Normalize { mean, std }) => {
                    // In f32, as torchvision's Normalize computes on a float tensor.
                    let c = plane % self.channels;
                    let (mean, std) = (mean.get(c) as f32, std.get(c) as f32);
                    dst.extend(px.iter().map(|&p| (p as f32 / 255.0 - mean) / std))
                }
                None => dst.extend(px.iter().map(|&p| p as f32 / 255.0)),
            }
        }
    }
}

fn take(split: &Split, range: std::ops::Range<usize>, pre: &Preprocess) -> Samples {
    let px = split.channels * split.rows * split.cols;
    let mut x = Vec::new();
    pre.extend(&split.images[range.start * px..range.end * px], &mut x);
    Samples {
        x,
        y: split.labels[range.clone()].to_vec(),
        len: range.len(),
    }
}

/// Applies a dataset spec to a loaded dataset.
pub fn prepare(data: &Dataset, spec: &DatasetSpec) -> Prepared {
    let c = data.train.channels;
    let pre = Preprocess::new(spec, c, data.train.rows, data.train.cols);
    let n = spec
        .train_limit
        .unwrap_or(data.train.len)
        .min(data.train.len);
    let (train_end, val) = match spec.validation.split() {
        // Keras: split_at = int(n * (1 - validation_split)).
        Some(f) => {
            let at = (n as f64 * (1.0 - f)) as usize;
            (at, Some(at..n))
        }
        None => (n, None),
    };
    let n_test = spec.test_limit.unwrap_or(data.test.len).min(data.test.len);
    let (h, w) = pre.output_size();
    Prepared {
        train: take(&data.train, 0..train_end, &pre),
        val: val.map(|r| take(&data.train, r, &pre)),
        test: take(&data.test, 0..n_test, &pre),
        shape: [c, h, w],
        info: data.info(),
    }
}
