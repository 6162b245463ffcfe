"""vlmir.models"""
