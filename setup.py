"Package metadata lives in settings.ini (nbdev 2); this file turns it into a setuptools build."
import shlex
from configparser import ConfigParser

import setuptools

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

requirements = shlex.split(cfg.get('requirements', ''))
dev_requirements = shlex.split(cfg.get('dev_requirements', ''))
lib_path = cfg['lib_path']

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    keywords=cfg['keywords'],
    author=cfg['author'],
    author_email=cfg['author_email'],
    license='Apache-2.0',
    url=cfg['git_url'],
    project_urls={'Source': cfg['git_url'], 'Documentation': cfg['doc_host'] + cfg['doc_baseurl']},
    classifiers=['Programming Language :: Python :: 3', 'License :: OSI Approved :: Apache Software License'],
    packages=setuptools.find_packages(include=[lib_path, f'{lib_path}.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements},
    python_requires='>=' + cfg['min_python'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={
        'console_scripts': cfg.get('console_scripts', '').split(),
        'nbdev': [f'{lib_path}={lib_path}._modidx:d'],
    },
)
