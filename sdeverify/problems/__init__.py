"""NGOS problems (Def. 3.1).  Each module holds one problem; :class:`NGOS` is the user route."""
from .base import NGOS, pack
from .quadratic import Quadratic, ConstantGradient
from .nonconvex import CosineWell
from .finite_sum import LinearRegression
from .svag import SVAG

__all__ = ["NGOS", "pack", "Quadratic", "ConstantGradient", "CosineWell", "LinearRegression", "SVAG"]
from .manifolds import ManifoldProblem, Valley, Sphere
from .diagonal_net import DiagonalNet
__all__ += ["ManifoldProblem", "Valley", "Sphere", "DiagonalNet"]
