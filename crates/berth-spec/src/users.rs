//! Who a container runs as: a user name or uid (and group) resolved against the image's own
//! `/etc/passwd` and `/etc/group`, read from the layer directories of its snapshot (topmost
//! first) without mounting them, every path resolved inside its layer.

use std::io::Read;
use std::path::PathBuf;

use rustix::fs::{Mode, OFlags};

/// The process identity for the spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub username: String,
}

/// A user or group the image does not know, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnknownUser(pub String);

type Result<T> = std::result::Result<T, UnknownUser>;

/// Reads a small file of the merged tree: the topmost layer holding it wins, every path
/// resolved inside its layer. None when no layer has it (or one deleted it).
pub fn read_merged(layers: &[PathBuf], path: &str) -> Option<String> {
    for l in layers {
        let root = rustix::fs::open(
            l,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        match berth_inroot::open(&root, path, OFlags::RDONLY, Mode::empty()) {
            Ok(fd) => {
                let f = std::fs::File::from(fd);
                if f.metadata().is_ok_and(|m| !m.is_file()) {
                    return None; // a whiteout or something that is not a file
                }
                let mut s = String::new();
                f.take(1 << 20).read_to_string(&mut s).ok()?;
                return Some(s);
            }
            Err(rustix::io::Errno::NOENT) => continue,
            Err(_) => return None,
        }
    }
    None
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
}

fn passwd(text: &str) -> Vec<Passwd> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(Passwd {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

/// (name, gid, members) of each group.
fn groups(text: &str) -> Vec<(String, u32, Vec<String>)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((
                f.first()?.to_string(),
                f.get(2)?.parse().ok()?,
                f.get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            ))
        })
        .collect()
}

/// Resolves a user string as Docker and containerd read it — `name`, `uid`, `name:group`,
/// `uid:gid` — against the image's files. A numeric uid the image does not list runs with
/// gid 0; a name it does not list is an error naming it. The user's groups in the image's
/// /etc/group are added when `with_image_groups`.
pub fn resolve(
    user: &str,
    layers: &[PathBuf],
    supplemental: &[i64],
    with_image_groups: bool,
) -> Result<Identity> {
    let pw = read_merged(layers, "/etc/passwd")
        .map(|t| passwd(&t))
        .unwrap_or_default();
    let gr = read_merged(layers, "/etc/group")
        .map(|t| groups(&t))
        .unwrap_or_default();
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let mut id = Identity::default();
    if !u.is_empty() {
        match u.parse::<u32>() {
            Ok(uid) => {
                id.uid = uid;
                if let Some(p) = pw.iter().find(|p| p.uid == uid) {
                    id.gid = p.gid;
                    id.username = p.name.clone();
                }
            }
            Err(_) => {
                let p = pw.iter().find(|p| p.name == u).ok_or_else(|| {
                    UnknownUser(format!("user {u:?} is not in the image's /etc/passwd"))
                })?;
                id.uid = p.uid;
                id.gid = p.gid;
                id.username = p.name.clone();
            }
        }
    }
    if let Some(g) = g.filter(|g| !g.is_empty()) {
        id.gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => gr
                .iter()
                .find(|(n, _, _)| n == g)
                .map(|(_, gid, _)| *gid)
                .ok_or_else(|| {
                    UnknownUser(format!("group {g:?} is not in the image's /etc/group"))
                })?,
        };
    }
    let mut extra: Vec<u32> = supplemental
        .iter()
        .filter_map(|g| u32::try_from(*g).ok())
        .collect();
    if with_image_groups && !id.username.is_empty() {
        extra.extend(
            gr.iter()
                .filter(|(_, _, members)| members.contains(&id.username))
                .map(|(_, gid, _)| *gid),
        );
    }
    extra.sort_unstable();
    extra.dedup();
    extra.retain(|g| *g != id.gid);
    id.additional_gids = extra;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> (tempfile::TempDir, Vec<PathBuf>) {
        let t = tempfile::tempdir().unwrap();
        let (upper, lower) = (t.path().join("upper"), t.path().join("lower"));
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::write(lower.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(
            upper.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            lower.join("etc/group"),
            "root:x:0:\napp:x:1000:\nwheel:x:10:app\n",
        )
        .unwrap();
        (t, vec![upper, lower])
    }

    #[test]
    fn users_resolve_as_docker_resolves_them() {
        let (_t, layers) = image();
        let app = resolve("app", &layers, &[], true).unwrap();
        assert_eq!(
            (app.uid, app.gid, app.additional_gids.clone()),
            (1000, 1000, vec![10])
        );
        let num = resolve("1000", &layers, &[5, 5, 1000], false).unwrap();
        assert_eq!(
            (num.uid, num.gid, num.additional_gids),
            (1000, 1000, vec![5])
        );
        let unknown = resolve("4242", &layers, &[], true).unwrap();
        assert_eq!((unknown.uid, unknown.gid), (4242, 0));
        let grp = resolve("app:wheel", &layers, &[], false).unwrap();
        assert_eq!((grp.uid, grp.gid), (1000, 10));
        let e = resolve("nobody", &layers, &[], true).unwrap_err();
        assert!(e.to_string().contains("\"nobody\""), "{e}");
        assert_eq!(resolve("", &layers, &[], true).unwrap().uid, 0);
    }

    #[test]
    fn files_resolve_inside_their_layer() {
        let (t, layers) = image();
        std::os::unix::fs::symlink("/../../../../etc/shadow", layers[0].join("etc/escape"))
            .unwrap();
        assert!(read_merged(&layers, "/etc/escape").is_none());
        assert!(read_merged(&layers, "/etc/group")
            .unwrap()
            .contains("wheel"));
        drop(t);
    }
}
