"""vlmir.training"""
