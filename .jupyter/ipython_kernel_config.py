# Written by `make setup`: TensorFlow's C++ start-up logs go to the terminal, not into notebooks.
c.IPKernelApp.capture_fd_output = False  # noqa: F821
