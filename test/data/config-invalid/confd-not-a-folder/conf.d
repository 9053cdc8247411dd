services: []
