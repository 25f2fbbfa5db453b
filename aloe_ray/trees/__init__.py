"""Pure tree-growing logic: specs, ids, one turn, the continuation policy. No Ray, no torch."""

from aloe_ray.trees.grow import RoleBinding, TreeRoles, TreeResult, grow_tree
from aloe_ray.trees.spec import TreePlan, TreeShape, TreeSpec, make_tree_specs

__all__ = ["RoleBinding", "TreeResult", "TreeRoles", "TreePlan", "TreeShape", "TreeSpec", "grow_tree", "make_tree_specs"]
