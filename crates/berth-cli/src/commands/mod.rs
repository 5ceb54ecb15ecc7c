//! One function per command, grouped by what they act on; `run` sends each parsed command
//! to its function.

pub mod containers;
pub mod images;
pub mod networks;
pub mod system;

use crate::cli::{Command as C, ImageCommand as I, SystemCommand as S};
use crate::error::{Error, Result};
use crate::Context;

/// Docker's way with several objects: each one's error is printed as it comes, the others
/// still go ahead, and the command exits 1 if any failed.
#[derive(Default)]
pub(crate) struct Failures(bool);

impl Failures {
    /// The value, or None once the error is printed.
    pub(crate) fn check<T>(&mut self, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("Error: {e}");
                self.0 = true;
                None
            }
        }
    }

    pub(crate) fn finish(self) -> Result<()> {
        if self.0 {
            Err(Error::Exit(1))
        } else {
            Ok(())
        }
    }
}

pub async fn run(ctx: &Context, command: C) -> Result<()> {
    match command {
        C::Run(a) => crate::run::run(ctx, &a).await,
        C::Create(a) => {
            let c = crate::run::create(ctx, &a).await?;
            println!("{}", c.id);
            Ok(())
        }
        C::Start {
            attach,
            containers: n,
        } => containers::start(ctx, &n, attach).await,
        C::Stop {
            time,
            signal,
            containers: n,
        } => containers::stop(ctx, &n, time, signal.as_deref()).await,
        C::Restart {
            time,
            containers: n,
        } => containers::restart(ctx, &n, time).await,
        C::Kill {
            signal,
            containers: n,
        } => containers::kill(ctx, &n, &signal).await,
        C::Rm {
            force,
            volumes,
            containers: n,
        } => containers::rm(ctx, &n, force, volumes).await,
        C::Ps(a) => containers::ps(ctx, &a).await,
        C::Logs(a) => containers::logs(ctx, &a).await,
        C::Exec(a) => containers::exec(ctx, &a).await,
        C::Attach { container } => containers::attach(ctx, &container).await,
        C::Inspect {
            format,
            kind,
            names,
        } => containers::inspect(ctx, &names, format.as_deref(), kind.as_deref()).await,
        C::Top { container } => containers::top(ctx, &container).await,
        C::Stats {
            no_stream,
            all,
            containers: n,
        } => containers::stats(ctx, &n, all, no_stream).await,
        C::Wait { containers: n } => containers::wait(ctx, &n).await,
        C::Port { container } => containers::port(ctx, &container).await,
        C::Rename {
            container,
            new_name,
        } => containers::rename(ctx, &container, &new_name).await,
        C::Pause { containers: n } => containers::pause(ctx, &n, true).await,
        C::Unpause { containers: n } => containers::pause(ctx, &n, false).await,
        C::Cp {
            source,
            destination,
        } => containers::cp(ctx, &source, &destination).await,
        C::Pull(a) | C::Image(I::Pull(a)) => images::pull(ctx, &a.image, a.quiet).await,
        C::Push(a) | C::Image(I::Push(a)) => images::push(ctx, &a.image, a.quiet).await,
        C::Images(a) | C::Image(I::Ls(a)) => images::images(ctx, &a).await,
        C::Rmi(a) | C::Image(I::Rm(a)) => images::rmi(ctx, &a.images, a.force).await,
        C::Tag { source, target } | C::Image(I::Tag { source, target }) => {
            images::tag(ctx, &source, &target).await
        }
        C::Image(I::Inspect { format, images: n }) => {
            images::inspect_images(ctx, &n, format.as_deref()).await
        }
        C::Image(I::Prune { all, .. }) => images::prune(ctx, all).await,
        C::Save(a) | C::Image(I::Save(a)) => images::save(ctx, &a.images, a.output.as_ref()).await,
        C::Load(a) | C::Image(I::Load(a)) => images::load(ctx, a.input.as_ref(), a.quiet).await,
        C::Login {
            username,
            password,
            password_stdin,
            server,
        } => images::login(ctx, server.as_deref(), username, password, password_stdin).await,
        C::Logout { server } => images::logout(server.as_deref()),
        C::Network(n) => networks::network(ctx, &n).await,
        C::Volume(v) => networks::volume(ctx, &v).await,
        C::System(S::Prune { all, volumes, .. }) => system::prune(ctx, all, volumes).await,
        C::System(S::Info) | C::Info => system::info(ctx).await,
        C::Version => system::version(ctx).await,
        C::Events { filter } => system::events(ctx, &filter).await,
        C::Autoremove { id } => containers::autoremove(ctx, &id).await,
        // Handled before connecting.
        C::Completion { .. } | C::Logger { .. } => Ok(()),
    }
}
