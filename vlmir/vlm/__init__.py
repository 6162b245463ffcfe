"""vlmir.vlm"""
