"""Methods, keyed by their Hydra option name. Every method module is imported here explicitly."""

from cxrdist.methods import amdensenet, chexnet, cral, dcnn, diseasemask, lungheart, ma  # noqa: F401  (registration)
from cxrdist.methods.base import Method, get_method, list_methods, register_method

__all__ = ["Method", "get_method", "list_methods", "register_method"]
