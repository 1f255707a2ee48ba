"""Developer tools: run a command inside a kernel with sch_plug in QEMU (vm), the demo."""
