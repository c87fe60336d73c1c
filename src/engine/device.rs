//! Choosing the device a spec asks for.

use candle_core::Device;

use super::EngineError;
use crate::spec::DeviceSpec;

/// `auto` picks CUDA device 0 when this build has CUDA and a GPU is present, else the CPU.
pub fn select(spec: DeviceSpec) -> Result<Device, EngineError> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto if candle_core::utils::cuda_is_available() => {
            Ok(Device::new_cuda(0).map(tuned).unwrap_or(Device::Cpu))
        }
        DeviceSpec::Auto => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                return Err(EngineError::Device(
                    "this build of trainyard has no CUDA support (build it with --features cuda)"
                        .into(),
                ));
            }
            let d =
                Device::new_cuda(n).map_err(|e| EngineError::Device(format!("cuda:{n}: {e}")))?;
            Ok(tuned(d))
        }
    }
}

/// A device as people write it in a spec: `cpu`, `cuda:0`.
pub fn name(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Whether this build has CUDA and a GPU answers (device 0).
pub fn gpu_present() -> bool {
    candle_core::utils::cuda_is_available() && Device::new_cuda(0).is_ok()
}

/// cudarc records two CUDA events per allocation to order uses across streams; each
/// Candle device here uses its one stream, so that is pure overhead (hundreds of driver
/// calls per training step).
fn tuned(d: Device) -> Device {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(c) = &d {
        // SAFETY: tensors of this device are only used on its own single stream.
        unsafe { c.disable_event_tracking() };
    }
    d
}

/// Candle asks for the thread count on every CPU matmul and, unless `RAYON_NUM_THREADS`
/// is set, reads /proc/cpuinfo each time (a measurable share of a small model's step).
/// Call once at start-up, before any other thread exists.
pub fn configure_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: called from `main` before any thread is spawned.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
}

/// Runs the compute threads (rayon's pool, which does the gemms, the CPU path's layers and
/// Candle's CPU ops) at nice `nice`. A worker shares the machine with the API and with
/// PostgreSQL: on 2 cores, a training step that takes both delayed an epoch's SSE event
/// by up to 100 ms. Lower-priority compute threads take only the CPU the others leave,
/// and lose almost nothing when there is nothing else to run. Call before anything uses
/// rayon; later calls change nothing. Linux only (the nice value is per thread there).
pub fn lower_compute_priority(nice: i32) {
    let built = rayon::ThreadPoolBuilder::new()
        .start_handler(move |_| {
            #[cfg(target_os = "linux")]
            // SAFETY: setpriority on the calling thread (who = 0) has no memory effects.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS as _, 0, nice);
            }
        })
        .build_global();
    if built.is_err() {
        tracing::debug!("rayon's pool already runs: compute priority unchanged");
    }
}
