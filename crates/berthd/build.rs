include!("../hot_order.rs");

fn main() {
    link_hot_order();
}
