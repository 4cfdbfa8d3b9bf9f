"""Only here to map the top-level kernels/ folder to the `ltxdist_kernels` package (see pyproject)."""

from setuptools import find_packages, setup

packages = find_packages(include=["ltxdist", "ltxdist.*"])
kernel_packages = [
    "ltxdist_kernels" + p[len("kernels") :] for p in find_packages(include=["kernels", "kernels.*"])
]
setup(packages=packages + kernel_packages, package_dir={"ltxdist_kernels": "kernels"})
