//! The `overlaybd-target` binary.

fn main() {
    println!("overlaybd-target: under construction");
}
