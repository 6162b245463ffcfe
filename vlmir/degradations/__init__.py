"""vlmir.degradations"""
