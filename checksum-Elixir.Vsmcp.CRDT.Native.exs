%{
  "libvsmcp_crdt_nif-v0.1.0-nif-2.16-x86_64-unknown-linux-gnu.so.tar.gz" => "sha256:57be6343dccf127834cb7e71795e61cffb1fffeaf3c967321453d60bce2bbe4a",
}
