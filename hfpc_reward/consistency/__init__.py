"""Product consistency: was the product in the generated image kept, or changed / expanded?"""
