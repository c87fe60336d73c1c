//! The batcher with stand-in models: answers go back to the right requests, batches
//! respect their limits, and a failing or panicking model fails its batch, and only it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

/// A stand-in model's image: 28x28 grayscale.
const PIXELS: usize = 28 * 28;

/// Answers each image with `[first pixel, images in the pass]`, and records pass sizes.
#[derive(Default)]
struct Echo {
    passes: Mutex<Vec<usize>>,
}

impl Classify for Echo {
    fn image_len(&self) -> usize {
        PIXELS
    }

    fn input_len(&self) -> usize {
        PIXELS
    }

    fn prepare(&self, images: &[u8], dst: &mut Vec<f32>) -> Result<(), String> {
        dst.extend(images.iter().map(|&p| p as f32));
        Ok(())
    }

    fn classify(&self, x: &[f32]) -> Result<Vec<Vec<f32>>, String> {
        let n = x.len() / PIXELS;
        self.passes.lock().unwrap().push(n);
        Ok(x.chunks(PIXELS).map(|img| vec![img[0], n as f32]).collect())
    }
}

/// Fails every pass holding an image whose first pixel is 13; panics on 66.
struct Flaky;

impl Classify for Flaky {
    fn image_len(&self) -> usize {
        PIXELS
    }

    fn input_len(&self) -> usize {
        PIXELS
    }

    fn prepare(&self, images: &[u8], dst: &mut Vec<f32>) -> Result<(), String> {
        dst.extend(images.iter().map(|&p| p as f32));
        Ok(())
    }

    fn classify(&self, x: &[f32]) -> Result<Vec<Vec<f32>>, String> {
        let firsts: Vec<u8> = x.chunks(PIXELS).map(|i| i[0] as u8).collect();
        if firsts.contains(&66) {
            panic!("the model broke");
        }
        if firsts.contains(&13) {
            return Err("out of memory".into());
        }
        Ok(firsts.iter().map(|&p| vec![p as f32]).collect())
    }
}

fn images(firsts: &[u8]) -> Vec<u8> {
    firsts
        .iter()
        .flat_map(|&p| {
            let mut img = vec![0u8; PIXELS];
            img[0] = p;
            img
        })
        .collect()
}

fn batcher(model: Arc<dyn Classify>, window_ms: u64, max_batch: usize) -> (Batcher, Arc<Incoming>) {
    let cfg = BatchConfig {
        window: Duration::from_millis(window_ms),
        max_batch,
    };
    let incoming = Arc::new(Incoming::default());
    let b = Batcher::start(model, cfg, incoming.clone(), Arc::default());
    (b, incoming)
}

/// Sends each request (a list of first pixels) at once, all announced as incoming first.
async fn send_all(
    b: &Arc<Batcher>,
    inc: &Arc<Incoming>,
    reqs: &[Vec<u8>],
) -> Vec<Result<Vec<Vec<f32>>, BatchError>> {
    let guards: Vec<_> = reqs.iter().map(|_| inc.enter()).collect();
    let tasks: Vec<_> = reqs
        .iter()
        .zip(guards)
        .map(|(r, g)| {
            let (b, px) = (b.clone(), images(r));
            tokio::spawn(async move { b.predict(px, g).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn each_request_gets_its_own_images_answers_and_passes_respect_the_limit() {
    let echo = Arc::new(Echo::default());
    let (b, inc) = batcher(echo.clone(), 200, 5);
    let b = Arc::new(b);
    let reqs: Vec<Vec<u8>> = vec![
        vec![1],
        vec![2, 3, 4],
        vec![5],
        vec![6, 7],
        (10..22).collect(), // 12 images: more than a pass holds
        vec![8],
        vec![9],
    ];
    let answers = send_all(&b, &inc, &reqs).await;
    for (req, ans) in reqs.iter().zip(&answers) {
        let ans = ans.as_ref().unwrap();
        let firsts: Vec<u8> = ans.iter().map(|p| p[0] as u8).collect();
        assert_eq!(&firsts, req);
    }
    let passes = echo.passes.lock().unwrap().clone();
    assert!(passes.iter().all(|&n| n <= 5), "{passes:?}");
    assert_eq!(passes.iter().sum::<usize>(), 21);
    // Everything was announced before the first pass, so the small requests shared passes.
    assert!(passes.len() < reqs.len() + 2, "{passes:?}");
}

#[tokio::test]
async fn a_lone_request_does_not_wait_for_the_window() {
    let (b, inc) = batcher(Arc::new(Echo::default()), 5_000, 64);
    let start = std::time::Instant::now();
    let ans = b.predict(images(&[3]), inc.enter()).await.unwrap();
    assert_eq!(ans, vec![vec![3.0, 1.0]]);
    assert!(
        start.elapsed() < Duration::from_millis(1000),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_batch_waits_at_most_the_window_for_a_request_that_never_comes() {
    let (b, inc) = batcher(Arc::new(Echo::default()), 100, 64);
    let _late = inc.enter(); // announced, never sent
    let start = std::time::Instant::now();
    b.predict(images(&[3]), inc.enter()).await.unwrap();
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    assert!(waited < Duration::from_millis(2000), "{waited:?}");
}

#[tokio::test]
async fn a_failed_or_panicking_pass_fails_every_request_in_it_and_no_other() {
    let (b, inc) = batcher(Arc::new(Flaky), 200, 64);
    let b = Arc::new(b);
    let answers = send_all(&b, &inc, &[vec![1], vec![13], vec![2, 3]]).await;
    for a in &answers {
        match a {
            Err(BatchError::Failed(e)) => assert!(e.contains("out of memory"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
    let answers = send_all(&b, &inc, &[vec![4], vec![66]]).await;
    for a in &answers {
        assert!(matches!(a, Err(BatchError::Failed(_))), "{a:?}");
    }
    // The batcher survives both and serves the next requests.
    let answers = send_all(&b, &inc, &[vec![5], vec![6, 7]]).await;
    assert_eq!(answers[0].as_ref().unwrap(), &vec![vec![5.0]]);
    assert_eq!(answers[1].as_ref().unwrap(), &vec![vec![6.0], vec![7.0]]);
}

#[tokio::test]
async fn prepared_and_pixel_requests_share_a_pass_and_each_gets_its_own_answers() {
    let echo = Arc::new(Echo::default());
    let (b, inc) = batcher(echo.clone(), 200, 64);
    let b = Arc::new(b);
    let prepared =
        |firsts: &[u8]| -> Vec<f32> { images(firsts).iter().map(|&p| p as f32).collect() };
    let guards: Vec<_> = (0..3).map(|_| inc.enter()).collect();
    let mut guards = guards.into_iter();
    let (b1, b2, b3) = (b.clone(), b.clone(), b.clone());
    let (g1, g2, g3) = (
        guards.next().unwrap(),
        guards.next().unwrap(),
        guards.next().unwrap(),
    );
    let (x1, px2, x3) = (prepared(&[1, 2]), images(&[3]), prepared(&[4]));
    let (a, p, c) = tokio::join!(
        tokio::spawn(async move { b1.predict_prepared(x1, g1).await }),
        tokio::spawn(async move { b2.predict(px2, g2).await }),
        tokio::spawn(async move { b3.predict_prepared(x3, g3).await }),
    );
    let firsts = |r: Result<Vec<Vec<f32>>, BatchError>| -> Vec<u8> {
        r.unwrap().iter().map(|p| p[0] as u8).collect()
    };
    assert_eq!(firsts(a.unwrap()), vec![1, 2]);
    assert_eq!(firsts(p.unwrap()), vec![3]);
    assert_eq!(firsts(c.unwrap()), vec![4]);
    // All three were announced before the first pass: one pass of four images.
    assert_eq!(*echo.passes.lock().unwrap(), vec![4]);

    // A lone request of floats runs as it is.
    let alone = b.predict_prepared(prepared(&[9]), inc.enter()).await;
    assert_eq!(alone.unwrap(), vec![vec![9.0, 1.0]]);
}
