"""Architecture search over supernets: brute force, evolution, Pareto plots, FID scoring.

* :mod:`.evolution` -- :func:`search`, :func:`brute_force`, :func:`evolve`, :func:`random_search`;
* :mod:`.plot` -- :func:`pareto_plot` (MACs vs quality of every evaluated candidate, matplotlib);
* :mod:`.fid` -- FID of generated images through torchmetrics with a user-supplied Inception.
"""
from .evolution import Evaluated, SearchResult, brute_force, evolve, pareto_front, random_search, search

__all__ = ["Evaluated", "SearchResult", "brute_force", "evolve", "pareto_front", "random_search", "search"]
