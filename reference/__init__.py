"""Reference runs of the real Linux kernel under QEMU, to check tiersim against."""
