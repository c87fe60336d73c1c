//! `trainyard housekeep`: one housekeeping pass from the command line (workers also run it
//! periodically), reporting what it did and how much room the tables take.

use clap::Args;

use super::service::DbArgs;
use crate::store::housekeeping::{Housekeeping, Swept};

#[derive(Debug, Args)]
pub struct HousekeepArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Also delete experiments that ended more than this many days ago.
    #[arg(long, env = "TRAINYARD_RETENTION_DAYS", value_parser = super::days)]
    pub retention_days: Option<f64>,
}

pub fn run(a: HousekeepArgs) -> anyhow::Result<()> {
    let h = Housekeeping {
        retention: super::service::retention(a.retention_days),
        ..Housekeeping::default()
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let store = crate::server::connect_and_migrate(
                &a.db.database_url,
                2,
                crate::store::DEFAULT_IDLE_IN_TRANSACTION,
            )
            .await?;
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
