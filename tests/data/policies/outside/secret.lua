-- Outside every policy directory: require must not find this.
return { secret = true }
