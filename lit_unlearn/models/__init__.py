"""lit_unlearn.models"""
