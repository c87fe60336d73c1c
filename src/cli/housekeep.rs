//! `trainyard housekeep`: one housekeeping pass from the command line (workers also run it
//! periodically), reporting what it did and how much room the tables take.

use std::time::Duration;

use clap::Args;

use super::service::DbArgs;
use crate::store::housekeeping::{Housekeeping, Swept};

#[derive(Debug, Args)]
pub struct HousekeepArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Also delete experiments that ended more than this many days ago.
    #[arg(long, env = "TRAINYARD_RETENTION_DAYS")]
    pub retention_days: Option<f64>,
}

pub fn run(a: HousekeepArgs) -> anyhow::Result<()> {
    let retention = match a.retention_days {
        Some(d) if !(d.is_finite() && d >= 0.0) => {
            anyhow::bail!("--retention-days must be a number of days >= 0, got {d}")
        }
        d => d.map(|d| Duration::from_secs_f64(d * 86400.0)),
    };
    let h = Housekeeping {
        retention,
        ..Housekeeping::default()
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let store = crate::server::connect_and_migrate(&a.db.database_url, 2).await?;
            let before = store.checkpoint_bytes().await?;
            let mut total = Swept::default();
            loop {
                let round = store.housekeep(&h).await?;
                total.swept += round.swept;
                total.deleted += round.deleted;
                if round == Swept::default() {
                    break;
                }
            }
            let mib = |b: i64| b as f64 / (1 << 20) as f64;
            println!(
                "swept {} ended experiments, deleted {}; checkpoint data {:.1} MiB before, \
                 {:.1} MiB after; the tables take {:.1} MiB on disk (freed space is reused \
                 once autovacuum has run)",
                total.swept,
                total.deleted,
                mib(before),
                mib(store.checkpoint_bytes().await?),
                mib(store.table_bytes().await?)
            );
            Ok(())
        })
}
