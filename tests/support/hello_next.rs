//! The hello example built under another name: its `/version` says `+hello_next`, so the
//! deploy test has a second, distinguishable build without running cargo itself.

#[allow(unreachable_pub)] // `main` is pub only for this reuse
#[path = "../../examples/hello.rs"]
mod hello;

fn main() -> std::process::ExitCode {
    hello::main()
}
