"""Deploying a trained segmenter: exported files (`export`) and a local HTTP API and page
(`server`, needs the `serve` extra).
"""
