//! `ponte group …`: create a group, change its members and title, leave
//! it, list and show groups. A group on the command line is `g:ID` (the
//! printed id, or its first hex digits) or `g:TITLE` when one group of the
//! profile has that title; here the `g:` may be left out.

use super::*;
use ponte_client::client::{format_timer, GroupChange, GroupInfo, GroupOutcome};
use ponte_client::store::Conversation;
use ponte_e2e::group::{GroupId, Role};
use ponte_e2e::Timer;

/// `ponte group …`.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group with these members (you are its admin).
    Create {
        /// The group's title.
        title: String,
        /// Members' handles.
        #[arg(required = true)]
        members: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Add members (admins only).
    Add {
        /// The group: g:ID or g:TITLE.
        group: String,
        /// Handles to add.
        #[arg(required = true)]
        handles: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Remove members (admins only); they read nothing sent afterwards.
    Remove {
        /// The group: g:ID or g:TITLE.
        group: String,
        /// Handles to remove.
        #[arg(required = true)]
        handles: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Make members admins (admins only).
    Promote {
        /// The group: g:ID or g:TITLE.
        group: String,
        /// Handles to promote.
        #[arg(required = true)]
        handles: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Change the title (admins only).
    Rename {
        /// The group: g:ID or g:TITLE.
        group: String,
        /// The new title.
        title: String,
        #[command(flatten)]
        common: Common,
    },
    /// Leave the group (the last admin promotes someone first).
    Leave {
        /// The group: g:ID or g:TITLE.
        group: String,
        #[command(flatten)]
        common: Common,
    },
    /// List your groups.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Show a group: members, admins, your role.
    Info {
        /// The group: g:ID or g:TITLE.
        group: String,
        #[command(flatten)]
        common: Common,
    },
}

/// The group `arg` names (`g:` optional here).
fn resolve_group(client: &Client, arg: &str) -> anyhow::Result<GroupId> {
    let full = if arg.starts_with("g:") {
        Cow::Borrowed(arg)
    } else {
        Cow::Owned(format!("g:{arg}"))
    };
    match client.resolve(&full)? {
        Conversation::Group(g) => Ok(g),
        _ => anyhow::bail!("{arg:?} is not a group"),
    }
}

fn role_str(role: Option<Role>) -> Option<&'static str> {
    role.map(|r| match r {
        Role::Admin => "admin",
        Role::Member => "member",
    })
}

/// A group as JSON: `group` (the id), `title`, `members`, `admins`,
/// `role` (yours, null once out), `status`, `version`, `timer` (`"1 h"`
/// or `"off"`) and `timer_secs` (0: off), `key_changed` (the members
/// whose identity key is not the one the membership names).
pub(super) fn group_json(info: &GroupInfo) -> serde_json::Value {
    serde_json::json!({
        "group": info.id.to_hex(),
        "title": info.title,
        "members": info.members.iter().map(|m| m.handle.as_str()).collect::<Vec<_>>(),
        "admins": info.admins().collect::<Vec<_>>(),
        "role": role_str(info.role),
        "status": info.status.as_str(),
        "version": info.version,
        "timer": info.timer.map_or_else(|| "off".to_owned(), format_timer),
        "timer_secs": info.timer.map_or(0, Timer::secs),
        "key_changed": changed_keys(info).collect::<Vec<_>>(),
    })
}

/// The members whose identity key is not the one the membership names.
fn changed_keys(info: &GroupInfo) -> impl Iterator<Item = &str> {
    info.members
        .iter()
        .filter(|m| m.key_changed)
        .map(|m| m.handle.as_str())
}

fn print_info(info: &GroupInfo, json: bool, long: bool) -> std::io::Result<()> {
    if json {
        return out(group_json(info));
    }
    let you = match role_str(info.role) {
        Some(r) => format!("you: {r}"),
        None => format!("you: {}", info.status.as_str()),
    };
    out(format_args!(
        "g:{}  {}  ({} members, {you})",
        info.id.to_hex(),
        clean(&info.title),
        info.members.len()
    ))?;
    if long {
        let members: Vec<String> = info
            .members
            .iter()
            .map(|m| {
                if m.admin {
                    format!("{} (admin)", clean(&m.handle))
                } else {
                    clean(&m.handle).into_owned()
                }
            })
            .collect();
        out(format_args!("members: {}", members.join(", ")))?;
        let admins: Vec<&str> = info.admins().collect();
        out(format_args!("admins: {}", admins.join(", ")))?;
        out(format_args!(
            "disappearing messages: {}",
            info.timer.map_or_else(|| "off".to_owned(), format_timer)
        ))?;
        for h in changed_keys(info) {
            let h = clean(h);
            out(format_args!(
                "WARNING: {h}'s identity key is not the one in the group's membership: \
                 sending to the group is held until you verify {h} (`ponte verify {h}`); \
                 once confirmed, {h} is left out until an admin adds {h} again"
            ))?;
        }
    }
    Ok(())
}

fn report(outcome: GroupOutcome, json: bool) -> anyhow::Result<ExitCode> {
    for w in &outcome.warnings {
        notice(&format!("WARNING: {w}"));
    }
    if let Some(note) = &outcome.note {
        notice(note);
    }
    print_info(&outcome.info, json, true)?;
    Ok(ExitCode::SUCCESS)
}

/// Make `change` to `group` (`None`: create it): on a connection of this
/// command's own, or, while `ponte listen` holds the profile's connection,
/// through the listener (unless a new member needs the server's
/// directory).
fn change(common: &Common, group: Option<&str>, change: GroupChange) -> anyhow::Result<ExitCode> {
    let mut client = open_client(common)?;
    let g = group.map(|g| resolve_group(&client, g)).transpose()?;
    let rt = runtime()?;
    if let Some(holder) = super::handoff::holder(common)? {
        if !super::handoff::group_needs_login(&client, &change, &holder)? {
            let outcome = super::handoff::group(&client, &rt, g.as_ref(), &change, &holder)?;
            return report(outcome, common.json);
        }
    }
    let outcome = rt.block_on(client.group_change(g.as_ref(), &change))?;
    report(outcome, common.json)
}

/// Run `ponte group …`.
pub(super) fn run(cmd: GroupCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        GroupCommand::Create {
            title,
            members,
            common,
        } => {
            for m in &members {
                check_handle(m)?;
            }
            change(&common, None, GroupChange::Create { title, members })
        }
        GroupCommand::Add {
            group,
            handles,
            common,
        } => {
            for h in &handles {
                check_handle(h)?;
            }
            change(&common, Some(&group), GroupChange::Add(handles))
        }
        GroupCommand::Remove {
            group,
            handles,
            common,
        } => change(&common, Some(&group), GroupChange::Remove(handles)),
        GroupCommand::Promote {
            group,
            handles,
            common,
        } => change(&common, Some(&group), GroupChange::Promote(handles)),
        GroupCommand::Rename {
            group,
            title,
            common,
        } => change(&common, Some(&group), GroupChange::Rename(title)),
        GroupCommand::Leave { group, common } => change(&common, Some(&group), GroupChange::Leave),
        GroupCommand::List { common } => {
            let client = open_client(&common)?;
            let groups = client.groups()?;
            if groups.is_empty() && !common.json {
                // On stderr: stdout stays a list (empty) for scripts.
                notice("no groups yet: `ponte group create TITLE MEMBER...` starts one");
            }
            for g in &groups {
                print_info(g, common.json, false)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        GroupCommand::Info { group, common } => {
            let client = open_client(&common)?;
            let g = resolve_group(&client, &group)?;
            print_info(&client.group_info(&g)?, common.json, true)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
