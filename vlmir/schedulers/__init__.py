"""vlmir.schedulers"""
