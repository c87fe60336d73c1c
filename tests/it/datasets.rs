//! Uploaded datasets over HTTP: a class-folder zip of PNGs is stored once (content
//! addressed), listed, shown, pictured and deleted; an experiment trains on it through a
//! worker, and `/predict` answers colour PNGs with the class folders' names.

use std::io::{Cursor, Write};

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::colour::{CLASSES, shapes};
use crate::common::service::{TestServer, worker_config};
use trainyard::data::mnist::Split;

/// One image of a split as a PNG (CHW in, interleaved RGB or gray out).
pub fn png_of(split: &Split, i: usize) -> Vec<u8> {
    let (c, h, w) = (split.channels, split.rows, split.cols);
    let px = split.image(i);
    let plane = h * w;
    let mut out = Vec::new();
    let enc = image::codecs::png::PngEncoder::new(&mut out);
    let (bytes, kind) = if c == 3 {
        let rgb: Vec<u8> = (0..plane)
            .flat_map(|p| [px[p], px[plane + p], px[2 * plane + p]])
            .collect();
        (rgb, image::ExtendedColorType::Rgb8)
    } else {
        (px.to_vec(), image::ExtendedColorType::L8)
    };
    image::ImageEncoder::write_image(enc, &bytes, w as u32, h as u32, kind).unwrap();
    out
}

/// A zip of `members` (path, bytes).
pub fn zip_of(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for (name, bytes) in members {
        if name.ends_with('/') {
            z.add_directory(name.as_str(), opts).unwrap();
        } else {
            z.start_file(name.as_str(), opts).unwrap();
            z.write_all(bytes).unwrap();
        }
    }
    z.finish().unwrap().into_inner()
}

/// The coloured shapes as class folders under `train/` and `test/`.
pub fn shapes_zip(train: usize, test: usize) -> Vec<u8> {
    let mut members = Vec::new();
    for (split_name, split) in [("train", shapes(train, 1)), ("test", shapes(test, 2))] {
        for i in 0..split.len {
            let class = CLASSES[split.labels[i] as usize];
            members.push((
                format!("{split_name}/{class}/{i:04}.png"),
                png_of(&split, i),
            ));
        }
    }
    zip_of(&members)
}

pub async fn upload(s: &TestServer, query: &str, media: &str, body: Vec<u8>) -> (u16, Value) {
    let r = s
        .client
        .post(s.url(&format!("/datasets{query}")))
        .header("content-type", media)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[sqlx::test]
async fn an_uploaded_zip_is_stored_once_listed_pictured_and_deleted(pool: PgPool) {
    let s = TestServer::start(pool.clone(), &[]).await;
    let zip = shapes_zip(60, 20);
    let (status, d) = upload(&s, "?name=shapes", "application/zip", zip.clone()).await;
    assert_eq!(status, 201, "{d}");
    assert_eq!(d["name"], "shapes");
    assert_eq!(d["format"], "folders");
    assert_eq!(
        (d["channels"].as_i64(), d["height"].as_i64()),
        (Some(3), Some(12))
    );
    assert_eq!(
        (d["train_samples"].as_i64(), d["test_samples"].as_i64()),
        (Some(60), Some(20))
    );
    // Class names sorted as ImageFolder sorts them.
    let mut sorted: Vec<&str> = CLASSES.to_vec();
    sorted.sort();
    assert_eq!(d["class_names"], json!(sorted));
    let counts: i64 = d["train_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_i64().unwrap())
        .sum();
    assert_eq!(counts, 60);
    assert_eq!(d["held_out"], Value::Null);
    assert_eq!(d["new_content"], true);
    let id = d["id"].as_str().unwrap().to_string();

    // The same content again: a second dataset, the tensors stored once.
    let (status, again) = upload(&s, "?name=again", "application/zip", zip).await;
    assert_eq!(status, 201);
    assert_eq!(again["new_content"], false);
    assert_eq!(again["sha256"], d["sha256"]);
    let blobs: i64 = sqlx::query_scalar("SELECT count(*) FROM dataset_blobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(blobs, 1);

    let (_, list) = s.get_json("/datasets").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["name"], "again", "newest first");
    let (status, shown) = s.get_json(&format!("/datasets/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(shown["sha256"], d["sha256"]);

    let r = s
        .client
        .get(s.url(&format!("/datasets/{id}/samples.png")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    let img = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
    assert!(
        img.height() >= 4 * 48,
        "a row per class: {}x{}",
        img.width(),
        img.height()
    );

    let del = |id: String| {
        let c = s.client.clone();
        let url = s.url(&format!("/datasets/{id}"));
        async move { c.delete(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(del(id.clone()).await, 204);
    assert_eq!(s.get_json(&format!("/datasets/{id}")).await.0, 404);
    // The other dataset still holds the tensors; deleting it too takes them.
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM dataset_blobs")
            .fetch_one(&pool)
            .await
            .unwrap(),
        1
    );
    assert_eq!(del(again["id"].as_str().unwrap().to_string()).await, 204);
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM dataset_blobs")
            .fetch_one(&pool)
            .await
            .unwrap(),
        0
    );
    s.stop().await;
}

#[sqlx::test]
async fn an_experiment_trains_on_an_upload_and_predicts_its_class_names(pool: PgPool) {
    let s = TestServer::start(pool, &[worker_config("w")]).await;
    let (status, d) = upload(&s, "?name=shapes", "application/zip", shapes_zip(600, 120)).await;
    assert_eq!(status, 201, "{d}");
    let id = d["id"].as_str().unwrap();

    // A model whose last layer does not fit the four classes is named precisely.
    let mut spec = json!({
        "version": 1,
        "dataset": {"id": id, "validation": "test"},
        "model": {"init": "torch", "layers": [
            {"type": "conv2d", "name": "conv1", "filters": 8, "kernel": 3, "padding": "same", "activation": "relu"},
            {"type": "max_pool2d", "size": 2},
            {"type": "flatten"},
            {"type": "dense", "name": "fc", "units": 10, "activation": "log_softmax"}
        ]},
        "optimizer": {"type": "adam", "learning_rate": 0.01},
        "epochs": 4,
        "batch_size": 32,
        "seed": 5,
        "device": "cpu"
    });
    let (status, problem) = s.submit(&spec).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        problem["errors"][0]["field"], "model.layers[3]",
        "{problem}"
    );
    assert!(
        problem["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("4 outputs, one per class")
    );
    // Per-channel normalisation must name one value per channel.
    spec["model"]["layers"][3]["units"] = json!(4);
    spec["dataset"]["normalize"] = json!({"mean": [0.5, 0.5], "std": 0.25});
    let (status, problem) = s.submit(&spec).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "dataset.normalize.mean");
    spec["dataset"]["normalize"] = json!({"mean": [0.1, 0.1, 0.1], "std": [0.2, 0.2, 0.2]});
    let (status, exp) = s.submit(&spec).await;
    assert_eq!(status, 201, "{exp}");
    let exp_id = exp["id"].as_str().unwrap().to_string();
    assert_eq!(exp["summary"]["input"], json!([3, 12, 12]), "{exp}");

    // In use: the dataset cannot be deleted while the experiment is queued or running.
    let r = s
        .client
        .delete(s.url(&format!("/datasets/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let problem: Value = r.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains(&exp_id),
        "{problem}"
    );

    let done = s.wait_status(&exp_id, "succeeded", 300).await;
    assert!(done["best_test_accuracy"].as_f64().unwrap() > 0.9, "{done}");

    // /predict takes the colour PNGs as they are and names the classes.
    let test = shapes(8, 9);
    let form = (0..test.len).fold(reqwest::multipart::Form::new(), |f, i| {
        f.part(
            format!("img{i}"),
            reqwest::multipart::Part::bytes(png_of(&test, i))
                .file_name(format!("{i}.png"))
                .mime_str("image/png")
                .unwrap(),
        )
    });
    let r = s
        .client
        .post(s.url(&format!("/predict?experiment={exp_id}")))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    let names = d["class_names"].as_array().unwrap();
    let mut right = 0;
    for (i, p) in answer["predictions"].as_array().unwrap().iter().enumerate() {
        assert_eq!(p["probabilities"].as_array().unwrap().len(), 4);
        assert_eq!(
            p["inverted"], false,
            "an upload's images are taken as they come"
        );
        let label = p["label"].as_u64().unwrap() as usize;
        assert_eq!(p["class_name"], names[label]);
        right += usize::from(names[label] == CLASSES[test.labels[i] as usize]);
    }
    assert!(right >= 7, "{right}/8 right: {answer}");
    // Ended: now it may go.
    let r = s
        .client
        .delete(s.url(&format!("/datasets/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    s.stop().await;
}

#[sqlx::test]
async fn a_spec_naming_an_unknown_or_a_local_dataset_or_two_is_refused(pool: PgPool) {
    let s = TestServer::start(pool, &[]).await;
    let (status, p) = s
        .submit(&json!({"preset": "torch-cnn", "dataset": {"id": "0190f5a0-0000-7000-8000-000000000001"}}))
        .await;
    assert_eq!(status, 422);
    assert_eq!(p["errors"][0]["field"], "dataset.id");
    let (status, p) = s
        .submit(&json!({"preset": "torch-cnn", "dataset": {"path": "/etc"}}))
        .await;
    assert_eq!(status, 422);
    assert_eq!(p["errors"][0]["field"], "dataset.path");
    let (status, p) = s
        .submit(&json!({"preset": "torch-cnn", "dataset": {"name": "mnist", "path": "/etc"}}))
        .await;
    assert_eq!(status, 422);
    assert_eq!(p["errors"][0]["field"], "dataset", "{p}");
    s.stop().await;
}

#[sqlx::test]
async fn the_cli_uploads_a_folder_and_trains_on_one_locally(pool: PgPool) {
    let s = TestServer::start(pool, &[]).await;
    // Class folders on disk, as a user has them.
    let dir = tempfile::tempdir().unwrap();
    let split = shapes(40, 4);
    for i in 0..split.len {
        let class = dir.path().join(CLASSES[split.labels[i] as usize]);
        std::fs::create_dir_all(&class).unwrap();
        std::fs::write(class.join(format!("{i}.png")), png_of(&split, i)).unwrap();
    }
    let bin = env!("CARGO_BIN_EXE_trainyard");
    let out = tokio::process::Command::new(bin)
        .args(["datasets", "upload"])
        .arg(dir.path())
        .args([
            "--name",
            "folder",
            "--test-fraction",
            "0.25",
            "--server",
            &s.base,
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("4 classes, ") && text.contains("images of 3x12x12"),
        "{text}"
    );
    let (_, list) = s.get_json("/datasets").await;
    assert_eq!(list[0]["name"], "folder");
    assert_eq!(list[0]["held_out"], 0.25);

    // A bad option is refused before anything is sent.
    let out = tokio::process::Command::new(bin)
        .args(["datasets", "upload"])
        .arg(dir.path())
        .args(["--size", "999", "--server", &s.base])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--size 999"), "{err}");
    // What only the service can tell (one class) is its problem, printed field by field,
    // and a failure.
    let lone = tempfile::tempdir().unwrap();
    std::fs::create_dir(lone.path().join("cat")).unwrap();
    std::fs::write(lone.path().join("cat/1.png"), png_of(&split, 0)).unwrap();
    let out = tokio::process::Command::new(bin)
        .args(["datasets", "upload"])
        .arg(lone.path())
        .args(["--server", &s.base])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("422") && err.contains("a classifier needs at least 2"),
        "{err}"
    );

    // The same folder trained locally, no server: `"dataset": {"path"}`.
    let spec = json!({
        "version": 1,
        "dataset": {"path": dir.path(), "validation": "test"},
        "model": {"layers": [
            {"type": "conv2d", "filters": 4, "kernel": 3, "activation": "relu"},
            {"type": "flatten"},
            {"type": "dense", "units": 4, "activation": "log_softmax"}
        ]},
        "optimizer": {"type": "adam", "learning_rate": 0.01},
        "epochs": 1,
        "batch_size": 8,
        "device": "cpu"
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let run = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(bin)
        .arg("train")
        .arg(&spec_path)
        .arg("--out")
        .arg(run.path().join("r"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("4 classes, ") && text.contains("images of 3x12x12"),
        "{text}"
    );
    assert!(text.contains("input 3x12x12"), "{text}");
    s.stop().await;
}
