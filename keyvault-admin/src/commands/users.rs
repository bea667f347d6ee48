//! `users list | set-role | disable | enable`: the dashboard's user management, through
//! [`App::set_user_access`] (audited; the last enabled admin is kept by the store).

use keyvault_core::UserRecord;

use super::{cli_actor, parse_role, to_json};
use crate::{
    app::App,
    cli::UsersCommand,
    error::{Error, Result},
    out::{stderr_line, stdout_line},
    views::UserView,
};

/// The user as it stands; an unknown name is refused (and audited) before any change.
async fn existing(app: &App, username: &str) -> Result<UserRecord> {
    match app.backends.users.user(username).await? {
        Some(u) => Ok(u),
        None => {
            let e = Error::NotFound(format!("admin user {username:?}"));
            Err(app
                .refused(&cli_actor(), "user.update", Some(username.to_owned()), e)
                .await)
        }
    }
}

pub(crate) async fn users(app: &App, cmd: UsersCommand) -> Result<()> {
    match cmd {
        UsersCommand::List { json } => {
            let all = app.backends.users.users().await?;
            if json {
                let views: Vec<UserView> = all.iter().map(UserView::from).collect();
                stdout_line(&to_json(&views)?);
            } else {
                stdout_line("USERNAME                          ROLE      ENABLED  CREATED");
                for u in &all {
                    stdout_line(&format!(
                        "{:<32}  {:<8}  {:<7}  {}",
                        u.username,
                        u.role,
                        u.enabled,
                        u.created_at.format("%Y-%m-%dT%H:%M:%SZ")
                    ));
                }
            }
        }
        UsersCommand::SetRole { username, role } => {
            let parsed = parse_role(&role);
            let role = match parsed {
                Ok(r) => r,
                Err(e) => {
                    return Err(app
                        .refused(&cli_actor(), "user.update", Some(username), e)
                        .await);
                }
            };
            let user = existing(app, &username).await?;
            // Verifier is refused by the App, with the message create-admin gives.
            app.set_user_access(&username, role, user.enabled, &cli_actor())
                .await?;
            if user.role == role {
                stderr_line(&format!("User {username:?} is already {role}."));
            } else {
                stderr_line(&format!(
                    "User {username:?} is now {role} (was {}); their sessions ended.",
                    user.role
                ));
            }
        }
        UsersCommand::Disable { username } => set_enabled(app, &username, false).await?,
        UsersCommand::Enable { username } => set_enabled(app, &username, true).await?,
    }
    Ok(())
}

async fn set_enabled(app: &App, username: &str, enabled: bool) -> Result<()> {
    let user = existing(app, username).await?;
    app.set_user_access(username, user.role, enabled, &cli_actor())
        .await?;
    let state = if enabled { "enabled" } else { "disabled" };
    if user.enabled == enabled {
        stderr_line(&format!("User {username:?} is already {state}."));
    } else if enabled {
        stderr_line(&format!("User {username:?} is enabled."));
    } else {
        stderr_line(&format!(
            "User {username:?} is disabled; their sessions ended."
        ));
    }
    Ok(())
}
