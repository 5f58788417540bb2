//! `vmkit-img`: see the library's documentation for the commands.

fn main() {
    let code = vmkit_img::run(
        std::env::args_os(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    std::process::exit(code);
}
