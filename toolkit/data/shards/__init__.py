"""WebDataset shards: conversion from the sources, the per-sample codec, the manifest and verification."""
