//! Class folders: `CLASS/…/img.png`, or `train/CLASS/…` and `test/CLASS/…`.
//!
//! The rules are torchvision `ImageFolder`'s, which Keras's `image_dataset_from_directory`
//! shares: a class is a first-level folder (files deeper inside it belong to it), classes
//! are sorted as Python's `sorted()` sorts strings (code point order, which is Rust's
//! `str` order) and labels index that order; hidden files and folders, `__MACOSX/` and
//! files of other extensions are skipped. One common top folder (what `zip -r digits.zip
//! digits` makes) is stripped. Where `ImageFolder` would skip silently or fail without
//! saying where (a nested zip, an image at the root, an empty class folder), this refuses
//! and names the member.
//!
//! **Two passes over the archive.** The first reads every member's bytes (bounded, so
//! bombs are caught here) but decodes only image headers ([`image::probe`]): it settles
//! the layout, the classes, the stored size and the channel count, and checks the
//! sample count and the decoded size against the limits, all before a pixel buffer
//! exists. The second pass decodes each image straight into its slot of the output,
//! whose size is then known. Reading the archive twice costs inflating it twice; keeping
//! every decoded image until the channel count is known could cost far more memory (a
//! folder of photos resized to 64x64), and the alternative of resizing colour before
//! converting to gray would not match PIL's `convert("L")` then `resize`.
//!
//! **Seeded order.** Samples are put in `ImageFolder`'s order (class, then folder, then
//! file name) and shuffled with the seed, as Keras shuffles, so that a spec's
//! `train_limit` and validation split (which take the first or last samples) see every
//! class.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use super::archive::{self, Member, Visitor};
use super::split::{self, SHUFFLE_STREAM, SplitMix64};
use super::{Decoded, Format, Options, UploadError};
use crate::data::image;
use crate::data::mnist::Split;

/// Extensions read as images (lowercase).
const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "pgm", "pnm", "ppm"];
/// Extensions of archives and compressed files, refused inside an upload.
const ARCHIVE_EXTENSIONS: [&str; 8] = ["zip", "tar", "tgz", "gz", "bz2", "xz", "7z", "rar"];

fn extension(path: &str) -> Option<String> {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
}

/// Hidden (a component starting with '.'), macOS resource forks, Windows thumbnails.
fn ignored(member: &Member) -> bool {
    member
        .components()
        .any(|c| c.starts_with('.') || c == "__MACOSX")
        || member.path.rsplit('/').next() == Some("Thumbs.db")
}

/// An image found by the survey.
struct Found {
    path: String,
    height: usize,
    width: usize,
    colour: bool,
}

/// Pass 1: names, folders, image headers.
struct Survey<'o> {
    opts: &'o Options,
    images: Vec<Found>,
    /// Every folder: listed ones and the parents of every file.
    folders: BTreeSet<String>,
}

impl Survey<'_> {
    fn add_parents(&mut self, path: &str) {
        let mut at = path;
        while let Some((parent, _)) = at.rsplit_once('/') {
            if !self.folders.insert(parent.to_string()) {
                break;
            }
            at = parent;
        }
    }
}

impl Visitor for Survey<'_> {
    fn member(&mut self, member: &Member) -> Result<bool, UploadError> {
        if ignored(member) {
            return Ok(false);
        }
        self.add_parents(&member.path);
        if member.dir {
            self.folders.insert(member.path.clone());
            return Ok(false);
        }
        let ext = extension(&member.path);
        if let Some(ext) = ext.as_deref().filter(|e| ARCHIVE_EXTENSIONS.contains(e)) {
            return Err(UploadError::NestedArchive {
                at: member.path.clone(),
                what: format!(".{ext} file"),
            });
        }
        Ok(ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str())))
    }

    fn file(&mut self, member: &Member, bytes: Vec<u8>) -> Result<(), UploadError> {
        if let Some(what) = archive::archive_magic(&bytes) {
            return Err(UploadError::NestedArchive {
                at: member.path.clone(),
                what: format!("{what} content in a file named as an image"),
            });
        }
        let info = image::probe(&bytes).map_err(|e| UploadError::image(&member.path, e))?;
        let max = self.opts.limits.max_samples;
        if self.images.len() >= max {
            return Err(UploadError::TooManySamples {
                count: format!("more than {max}"),
                limit: max,
            });
        }
        self.images.push(Found {
            path: member.path.clone(),
            height: info.height as usize,
            width: info.width as usize,
            colour: info.colour,
        });
        Ok(())
    }
}

/// Where an image goes: its split, slot and whether it is resized.
#[derive(Clone, Copy)]
struct Slot {
    test: bool,
    index: usize,
}

/// Pass 2: decode each image into its slot.
struct Fill<'a> {
    slots: &'a HashMap<String, Slot>,
    train: &'a mut Split,
    test: &'a mut Split,
    filled: usize,
}

impl Visitor for Fill<'_> {
    fn member(&mut self, member: &Member) -> Result<bool, UploadError> {
        Ok(!member.dir && self.slots.contains_key(&member.path))
    }

    fn file(&mut self, member: &Member, bytes: Vec<u8>) -> Result<(), UploadError> {
        let Some(&slot) = self.slots.get(&member.path) else {
            return Ok(());
        };
        let out = if slot.test {
            &mut *self.test
        } else {
            &mut *self.train
        };
        let px = image::decode_to(&bytes, out.channels, out.rows, out.cols)
            .map_err(|e| UploadError::image(&member.path, e))?;
        let size = px.len();
        out.images[slot.index * size..(slot.index + 1) * size].copy_from_slice(&px);
        self.filled += 1;
        Ok(())
    }
}

/// The layout read from the survey: for each image, its split and class.
struct Layout {
    /// Number of leading components stripped (a common top folder).
    strip: usize,
    split_folders: bool,
}

impl Layout {
    /// The components below the stripped prefix.
    fn rel<'p>(&self, path: &'p str) -> Vec<&'p str> {
        path.split('/').skip(self.strip).collect()
    }
}

fn bad_layout(at: &str, detail: impl Into<String>) -> UploadError {
    UploadError::BadLayout {
        at: at.to_string(),
        detail: detail.into(),
    }
}

/// Strips common top folders (neither `train` nor `test`) while every image stays at
/// least two levels deep below them, and tells the flat layout from train/test.
fn layout(images: &[Found], folders: &BTreeSet<String>) -> Layout {
    let mut strip = 0;
    while let Some(first) = images.first() {
        let Some(top) = first.path.split('/').nth(strip) else {
            break;
        };
        let under_top = |p: &str| p.split('/').nth(strip) == Some(top);
        let deep_enough = images
            .iter()
            .all(|i| i.path.split('/').count() >= strip + 3 && under_top(&i.path));
        let folders_under = folders
            .iter()
            .filter(|f| f.split('/').count() > strip)
            .all(|f| under_top(f));
        if top == "train" || top == "test" || !deep_enough || !folders_under {
            break;
        }
        strip += 1;
    }
    let split_folders = images
        .iter()
        .any(|i| matches!(i.path.split('/').nth(strip), Some("train" | "test")));
    Layout {
        strip,
        split_folders,
    }
}

pub(crate) fn decode(path: &Path, opts: &Options) -> Result<Decoded, UploadError> {
    let limits = &opts.limits;
    let mut survey = Survey {
        opts,
        images: Vec::new(),
        folders: BTreeSet::new(),
    };
    archive::walk(path, limits, &mut survey)?;
    let Survey {
        images, folders, ..
    } = survey;
    if images.is_empty() {
        return Err(bad_layout(
            "archive",
            "no images found: class folders must hold .png, .jpg, .jpeg, .pgm, .pnm or .ppm \
             files",
        ));
    }
    let layout = layout(&images, &folders);

    // Class folders per split ("train" for the flat layout): name -> full folder path.
    let mut class_folders: BTreeMap<(bool, String), String> = BTreeMap::new();
    for folder in &folders {
        let rel = layout.rel(folder);
        let (test, class) = match (layout.split_folders, rel.as_slice()) {
            (_, []) => continue,
            (false, [class, ..]) => (false, *class),
            (true, [top]) if *top == "train" || *top == "test" => continue,
            (true, [top, class, ..]) if *top == "train" || *top == "test" => {
                (*top == "test", *class)
            }
            (true, _) => {
                return Err(bad_layout(
                    folder,
                    "a folder beside train/ and test/; only those two are read (put \
                     validation images in train/, which a spec's validation split divides)",
                ));
            }
        };
        let full = folder
            .split('/')
            .take(layout.strip + 1 + usize::from(layout.split_folders));
        class_folders
            .entry((test, class.to_string()))
            .or_insert_with(|| full.collect::<Vec<_>>().join("/"));
    }

    // Each image's split and class name.
    let mut assigned: Vec<(bool, &str)> = Vec::with_capacity(images.len());
    for img in &images {
        let rel = layout.rel(&img.path);
        let entry = match (layout.split_folders, rel.as_slice()) {
            (false, [class, _, ..]) => (false, *class),
            (false, _) => {
                return Err(bad_layout(
                    &img.path,
                    "an image at the top of the archive; put every image in a folder named \
                     after its class",
                ));
            }
            (true, [top, class, _, ..]) if *top == "train" || *top == "test" => {
                (*top == "test", *class)
            }
            (true, [top, _]) if *top == "train" || *top == "test" => {
                return Err(bad_layout(
                    &img.path,
                    format!("an image directly in {top}/; put it in {top}/<class>/"),
                ));
            }
            (true, _) => {
                return Err(bad_layout(
                    &img.path,
                    "an image outside train/ and test/; once the archive has those folders, \
                     every image must be in one of them",
                ));
            }
        };
        assigned.push(entry);
    }

    // Every class folder needs an image; classes are train's.
    let mut has_images: BTreeSet<(bool, &str)> = BTreeSet::new();
    has_images.extend(assigned.iter().copied());
    for ((test, class), folder) in &class_folders {
        if !has_images.contains(&(*test, class.as_str())) {
            return Err(UploadError::EmptyClass {
                at: folder.clone(),
                class: class.clone(),
                detail: format!(
                    "the class folder `{class}` holds no images (.png, .jpg, .jpeg, .pgm, \
                     .pnm or .ppm)"
                ),
            });
        }
    }
    if layout.split_folders && !has_images.iter().any(|(test, _)| !test) {
        return Err(bad_layout(
            "test",
            "test/ without train/: upload train/<class>/ folders too",
        ));
    }
    let classes: Vec<String> = has_images
        .iter()
        .filter(|(test, _)| !test)
        .map(|(_, c)| c.to_string())
        .collect();
    for (test, class) in &has_images {
        if *test && classes.binary_search_by(|c| c.as_str().cmp(class)).is_err() {
            return Err(bad_layout(
                &class_folders[&(true, class.to_string())],
                format!("a class folder in test/ that train/ does not have (`{class}`)"),
            ));
        }
    }
    if classes.len() > limits.classes() {
        return Err(UploadError::TooManyClasses {
            count: classes.len(),
            limit: limits.classes(),
        });
    }
    if classes.len() < 2 {
        return Err(UploadError::SingleClass { classes });
    }

    let (height, width) = stored_size(&images, opts)?;
    let channels = opts.channels.unwrap_or(if images.iter().any(|i| i.colour) {
        3
    } else {
        1
    });
    let sample = channels * height * width;
    super::check_decoded(images.len(), sample, limits)?;

    // ImageFolder's order, then the seeded shuffle; labels index the sorted classes.
    let mut order: Vec<(bool, u8, &str, &str, usize)> = assigned
        .iter()
        .zip(&images)
        .enumerate()
        .map(|(i, (&(test, class), img))| {
            let label = classes
                .binary_search_by(|c| c.as_str().cmp(class))
                .unwrap_or(0);
            let (dir, file) = img.path.rsplit_once('/').unwrap_or(("", &img.path));
            (test, label as u8, dir, file, i)
        })
        .collect();
    order.sort_unstable();
    let mut rng = SplitMix64::new(opts.seed ^ SHUFFLE_STREAM);
    let n_train = order.iter().filter(|o| !o.0).count();
    let (train_order, test_order) = order.split_at_mut(n_train);
    rng.shuffle(train_order);
    rng.shuffle(test_order);

    let new_split = |items: &[(bool, u8, &str, &str, usize)]| Split {
        images: vec![0; items.len() * sample],
        labels: items.iter().map(|o| o.1).collect(),
        len: items.len(),
        channels,
        rows: height,
        cols: width,
    };
    let mut train = new_split(train_order);
    let mut test = new_split(test_order);
    let mut slots = HashMap::with_capacity(images.len());
    for (part, test) in [(&*train_order, false), (&*test_order, true)] {
        for (index, o) in part.iter().enumerate() {
            slots.insert(images[o.4].path.clone(), Slot { test, index });
        }
    }
    let resized = images
        .iter()
        .filter(|i| (i.height, i.width) != (height, width))
        .count();
    drop(order);

    let mut fill = Fill {
        slots: &slots,
        train: &mut train,
        test: &mut test,
        filled: 0,
    };
    archive::walk(path, limits, &mut fill)?;
    if fill.filled != images.len() {
        return Err(UploadError::CorruptArchive {
            at: "archive".into(),
            detail: "the archive changed while it was read".into(),
        });
    }

    let uploaded = (test.len > 0).then_some(test);
    let (train, test, test_split) = split::test_split(train, uploaded, opts);
    Ok(Decoded {
        train,
        test,
        class_names: classes,
        format: Format::Folders,
        test_split,
        resized,
    })
}

/// The size every image is stored at: `size`, or the one size all images share.
fn stored_size(images: &[Found], opts: &Options) -> Result<(usize, usize), UploadError> {
    if let Some(size) = opts.size {
        return Ok(size);
    }
    let Some(first) = images.first() else {
        return Ok((0, 0));
    };
    let size = (first.height, first.width);
    if let Some(other) = images.iter().find(|i| (i.height, i.width) != size) {
        return Err(UploadError::MixedSizes {
            first_at: first.path.clone(),
            first: size,
            at: other.path.clone(),
            second: (other.height, other.width),
        });
    }
    let max = opts.limits.max_side;
    if size.0 > max || size.1 > max {
        return Err(UploadError::SizeRequired {
            at: first.path.clone(),
            detail: format!(
                "the images are {}x{} (height x width), larger than the {max}x{max} stored at \
                 most; pass the size option to resize them",
                size.0, size.1
            ),
        });
    }
    Ok(size)
}
