//! `trainyard keys`: make, list and revoke API keys, and set accounts' quotas, straight
//! against the database (the same operations admins have over HTTP at `/keys` and
//! `/accounts`).

use clap::{Args, Subcommand};
use uuid::Uuid;

use super::service::DbArgs;
use crate::store::accounts::QuotasPatch;

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key (and the account, when new); prints the key as the only line on stdout.
    Create {
        /// The account the key acts for.
        #[arg(long)]
        account: String,
        /// The key sees and acts on every account's experiments and manages keys.
        #[arg(long)]
        admin: bool,
    },
    /// List keys (never their secrets).
    List {
        /// Only this account's keys.
        #[arg(long)]
        account: Option<String>,
    },
    /// Revoke a key: it and its browser sessions stop working at once.
    Revoke {
        /// The key's id (from `keys list`).
        id: Uuid,
    },
    /// Show an account's quotas and use, changing those given (`none` removes a limit).
    Quota {
        #[arg(long)]
        account: String,
        /// Most experiments queued at once (more are refused with 429).
        #[arg(long, value_parser = limit::<i32>)]
        max_queued: Option<Limit<i32>>,
        /// Most experiments running at once (more wait in the queue).
        #[arg(long, value_parser = limit::<i32>)]
        max_running: Option<Limit<i32>>,
        /// Most training FLOPs submitted in any 24 hours (more are refused with 429).
        #[arg(long, value_parser = limit::<f64>)]
        max_flops_per_day: Option<Limit<f64>>,
    },
}

/// A quota as given on the command line: a number, or `None` for `none` (no limit).
#[derive(Debug, Clone, Copy)]
pub struct Limit<T>(Option<T>);

/// A limit: a number of 0 or more, or `none`.
fn limit<T>(s: &str) -> Result<Limit<T>, String>
where
    T: std::str::FromStr + PartialOrd + Default,
{
    if s.eq_ignore_ascii_case("none") {
        return Ok(Limit(None));
    }
    match s.parse::<T>() {
        Ok(v) if v >= T::default() => Ok(Limit(Some(v))),
        _ => Err(format!("{s:?} is not a number of 0 or more, nor `none`")),
    }
}

pub fn run(a: KeysArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = crate::server::connect_and_migrate(
            &a.db.database_url,
            2,
            crate::store::DEFAULT_IDLE_IN_TRANSACTION,
        )
        .await?;
        match a.command {
            KeysCommand::Create { account, admin } => {
                let key = store.create_key(&account, admin).await?;
                eprintln!(
                    "made key {} for account {}{}; it is shown only now",
                    key.info.id,
                    key.info.account,
                    if admin { " (admin)" } else { "" }
                );
                println!("{}", key.key);
            }
            KeysCommand::List { account } => {
                println!(
                    "{:<36}  {:<20}  {:<15}  {:<5}  {:<20}  {:<20}  revoked",
                    "id", "account", "prefix", "admin", "created", "last used"
                );
                let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_else(|| "-".into())
                };
                for k in store.keys(account.as_deref()).await? {
                    println!(
                        "{:<36}  {:<20}  {:<15}  {:<5}  {:<20}  {:<20}  {}",
                        k.id,
                        k.account,
                        k.prefix,
                        if k.admin { "yes" } else { "no" },
                        time(Some(k.created_at)),
                        time(k.last_used_at),
                        time(k.revoked_at)
                    );
                }
            }
            KeysCommand::Revoke { id } => {
                let k = store.revoke_key(id).await?;
                println!("revoked key {} of account {}", k.id, k.account);
            }
            KeysCommand::Quota {
                account,
                max_queued,
                max_running,
                max_flops_per_day,
            } => {
                let patch = QuotasPatch {
                    max_queued: max_queued.map(|l| l.0),
                    max_running: max_running.map(|l| l.0),
                    max_flops_per_day: max_flops_per_day.map(|l| l.0),
                };
                let acc = store.set_quotas(&account, patch).await?;
                println!("{}", serde_json::to_string_pretty(&acc)?);
            }
        }
        anyhow::Ok(())
    })
}
