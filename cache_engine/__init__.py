"""The node-shared cache: UFS backends, block index, tiers, eviction, preload and stats.

Never imports `csi`: the CSI driver and the FUSE daemons reach the cache only through this
package's client API.
"""
