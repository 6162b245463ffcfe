"""vlmir.pipelines"""
