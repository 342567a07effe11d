include!("../ssm/torch_link.rs");

fn main() {
    torch_link();
}
