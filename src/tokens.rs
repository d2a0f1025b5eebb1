//! `parley tokens create|list|revoke`: API tokens of the web API.
//!
//! `create` prints the new token once, alone on stdout (so `TOKEN=$(parley tokens
//! create --principal alice)` works); only its SHA-256 is stored. Nothing else ever
//! prints a token.

use clap::Subcommand;
use parley_db::api_token;
use uuid::Uuid;

use crate::Failure;

/// The `tokens` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token for a principal and print it (shown only this once).
    Create {
        /// Who the token acts as: the owner of the conversations it creates
        /// (letters, digits, `.`, `_`, `-`, `@`; at most 200 characters). The platform
        /// names (telegram, slack, discord, github, generic) and `local` are reserved.
        #[arg(long, value_parser = parse_principal)]
        principal: String,
        /// An admin token sees and acts on every principal's conversations.
        #[arg(long)]
        admin: bool,
    },
    /// List tokens (never the tokens themselves): id, principal, admin, created, last
    /// used, revoked.
    List,
    /// Revoke a token; it stops working within a few seconds (the servers' token cache).
    Revoke {
        /// The token's id, as `tokens list` shows it.
        id: Uuid,
    },
}

/// Accepts a principal name: 1–200 of `[A-Za-z0-9._@-]`, not a reserved name.
pub(crate) fn parse_principal(s: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s.chars().count() <= api_token::MAX_PRINCIPAL_CHARS
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if !valid {
        return Err("a principal is 1 to 200 letters, digits, '.', '_', '-' or '@'".into());
    }
    if parley_server::access::is_reserved_principal(s) {
        return Err(format!(
            "{s:?} is reserved: the platform names (telegram, slack, discord, github, generic) and `local` own \
             platform and local conversations, which only admin tokens may see; choose another name"
        ));
    }
    Ok(s.to_owned())
}

fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// Runs a `tokens` subcommand.
///
/// # Errors
/// Exit 1 when the database fails, exit 3 when `revoke` names no token.
pub async fn run(db: &parley_db::DbConfig, cmd: TokensCommand) -> Result<(), Failure> {
    parley_db::ensure_database(db)
        .await
        .map_err(|e| Failure::failed(format!("cannot reach PostgreSQL ({e}); is it running? see README")))?;
    parley_db::migrate::run(db).await?;
    let pool = parley_db::connect(db).await?;
    let client = pool.get().await.map_err(parley_db::DbError::from)?;
    match cmd {
        TokensCommand::Create { principal, admin } => {
            let (row, token) = api_token::create(&client, &principal, admin).await?;
            println!("{}", token.expose());
            eprintln!(
                "created {}token {} for principal {:?}; it is shown only this once: store it now",
                if row.admin { "admin " } else { "" },
                row.api_token_id,
                row.principal
            );
        }
        TokensCommand::List => {
            println!(
                "{:<36}  {:<20}  {:<5}  {:<19}  {:<19}  REVOKED",
                "ID", "PRINCIPAL", "ADMIN", "CREATED", "LAST USED"
            );
            for t in api_token::list(&client).await? {
                println!(
                    "{:<36}  {:<20}  {:<5}  {:<19}  {:<19}  {}",
                    t.api_token_id,
                    t.principal,
                    if t.admin { "yes" } else { "no" },
                    when(Some(t.created_at)),
                    when(t.last_used_at),
                    when(t.revoked_at),
                );
            }
        }
        TokensCommand::Revoke { id } => {
            let t = api_token::revoke(&client, id).await?;
            println!("revoked token {} of principal {:?}", t.api_token_id, t.principal);
        }
    }
    Ok(())
}
