//! An app whose own flag clashes with baton's (`-p` for a port): it must refuse to start with
//! a clear error in every build, not turn `-p 8080` into a pid file named `8080`.

#[derive(clap::Args, Debug)]
struct Args {
    /// The port (clashes with baton's `-p/--pid`).
    #[arg(short, long)]
    port: Option<u16>,
}

fn main() -> std::process::ExitCode {
    baton::App::new().serve(|_: Args| async { axum::Router::new() })
}
