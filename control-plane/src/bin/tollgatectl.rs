//! `tollgatectl`: the operator CLI. Everything lives in
//! [`tollgate_control_plane::ctl`].

fn main() -> std::process::ExitCode {
    tollgate_control_plane::ctl::main()
}
