"""Errors a user can act on."""


class ShapeError(ValueError):
    """Operands whose shapes cannot go together; the message names the op and both shapes."""


class AxisError(ShapeError, IndexError):
    """An axis outside a tensor's dimensions; the message names the axis and the dimension count.

    An IndexError, as PyTorch's "Dimension out of range", and still a ShapeError, as zyx raised before.
    """


class OutOfMemoryError(MemoryError):
    """An allocation larger than the device can hold, found before anything runs; the message names the shape,
    the dtype and the bytes asked for, and the device's limit."""


class KernelBuildError(RuntimeError):
    """The OpenCL or WGSL compiler rejected a kernel Zyx generated (a bug in Zyx or the driver); the message has
    its log."""


GRADIENTS_ARE_RETURNED = (
    "Zyx keeps no .grad on tensors: `grads = loss.backward(model.parameters())` returns the gradients (one per "
    "tensor, in order), and `opt.update(model.parameters(), grads)` applies them, so there is nothing to zero.")
