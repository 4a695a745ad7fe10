"""The local stack: the demo (nothing from Google), the dev stack (emulators), managed processes."""
