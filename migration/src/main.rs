//! Command line for dabgent_mq's migrations: `cargo run -p migration -- up` or
//! `sea-orm-cli migrate up -d migration`, with `DATABASE_URL` set.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectOptions, Database};

#[tokio::main]
async fn main() {
    // `fresh` drops every table of the database, the host application's included. The queue's
    // tables live in the host's database, so that command is refused; `reset` and `refresh`
    // touch only the tables these migrations created.
    if std::env::args().skip(1).any(|arg| arg == "fresh") {
        eprintln!(
            "error: `fresh` would drop every table in the database, not only dabgent_mq's; \
             use `refresh` (down, then up) or `reset` (down) instead"
        );
        std::process::exit(2);
    }
    cli::run_cli_with_connection(
        migration::Migrator,
        |mut options: ConnectOptions| async move {
            // A fresh SQLite file is created rather than refused, as the library itself does.
            options.map_sqlx_sqlite_opts(|sqlite| sqlite.create_if_missing(true));
            Database::connect(options).await
        },
    )
    .await;
}
