"""Siamese tracking networks (SiamRPN / SiamRPN++ / SiamMask), state_dict-compatible with PySOT.

``build_model(cfg)`` builds the network from a config (PySOT key names); the pieces are
importable on their own for tools and tests.
"""
from .backbone import get_backbone
from .builder import SiamRPN, build_model
from .checkpoint import LoadReport, load_model_checkpoint, load_pretrained
from .flops import count_flops, flops_by_module
from .heads import get_mask_head, get_refine_head, get_rpn_head
from .loss import log_softmax_cls, select_cross_entropy_loss, select_mask_logistic_loss, weight_l1_loss
from .neck import get_neck

__all__ = ['build_model', 'SiamRPN', 'get_backbone', 'get_neck', 'get_rpn_head', 'get_mask_head',
           'get_refine_head', 'load_pretrained', 'load_model_checkpoint', 'LoadReport',
           'count_flops', 'flops_by_module', 'log_softmax_cls', 'select_cross_entropy_loss',
           'select_mask_logistic_loss', 'weight_l1_loss']
