//! A checkpoint of a colour model loads into the equivalent PyTorch module and gives the
//! same probabilities: `tests/fixtures/colour/` holds a checkpoint trained by `trainyard
//! train` on generated RGB shapes (read from a class-folder zip, `dataset.path`), eight of
//! its test PNGs, and what PyTorch 2.15 computed from them (`make_fixture.py torch`: the
//! spec rebuilt as an `nn.Sequential`, `load_state_dict(strict=True)`, torchvision's
//! `ToTensor` and per-channel `Normalize`). trainyard decodes the PNGs as `/predict` does
//! (colour kept) and must agree to float rounding.

use candle_core::Device;
use serde_json::Value;
use trainyard::data::image::decode_to;
use trainyard::engine::Checkpoint;
use trainyard::engine::infer::Predictor;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/colour");

#[test]
fn a_colour_checkpoint_gives_pytorchs_probabilities_for_colour_pngs() {
    let ckpt = Checkpoint::load(format!("{DIR}/checkpoint.safetensors").as_ref()).unwrap();
    assert_eq!((ckpt.data.channels, ckpt.data.height), (3, 16));
    let predictor = Predictor::new(&ckpt, &Device::Cpu).unwrap();
    let torch: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{DIR}/torch_probabilities.json")).unwrap(),
    )
    .unwrap();
    let mut worst = 0f64;
    let mut right = 0;
    let preds = torch["predictions"].as_array().unwrap();
    for p in preds {
        let name = p["image"].as_str().unwrap();
        let bytes = std::fs::read(format!("{DIR}/images/{name}")).unwrap();
        let px = decode_to(&bytes, 3, 16, 16).unwrap();
        let got = &predictor.predict(&px).unwrap()[0];
        let want: Vec<f64> = p["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (g, w) in got.iter().zip(&want) {
            let err = if *w > 1e-6 {
                (f64::from(*g) - w).abs() / w
            } else {
                (f64::from(*g) - w).abs() * 1e3
            };
            worst = worst.max(err);
        }
        // The file is named by its class folder.
        let best = trainyard::engine::infer::argmax(got);
        right += usize::from(name.starts_with(&format!("{}-", ckpt.data.class_names[best])));
    }
    println!("largest relative difference from PyTorch: {worst:.2e}");
    assert!(worst < 1e-4, "{worst}");
    assert_eq!(right, preds.len(), "each image is its folder's class");
}
